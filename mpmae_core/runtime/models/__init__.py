"""What a model file is: the versioned metadata (``metadata``), an ONNX Runtime session over it
(``model``), the encoder fingerprint heads carry (``fingerprint``) and the ONNX writer
(``onnx_writer``) that encoders and heads are written with."""
