"""The released models, without torch: downloads that heal (``fetch``), the safe reader of
reference ``.pth`` checkpoints (``pth``) and their conversion to ONNX (``pth_to_onnx``)."""
