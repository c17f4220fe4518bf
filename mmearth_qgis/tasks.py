"""Work in QGIS's task manager, off the interface thread, with one way to end."""

from qgis.core import QgsTask


class BackgroundTask(QgsTask):
    """Run ``fn(progress, cancelled)`` in the background. Afterwards ``result_`` holds what it
    returned, or ``error`` the message to show: an error's own words (never a traceback), or
    ``cancelled_message`` after a cancel (empty where the caller says it was cancelled)."""

    def __init__(self, description: str, fn, cancelled_message: str = ""):
        super().__init__(description, QgsTask.CanCancel)
        self.fn, self.cancelled_message = fn, cancelled_message
        self.result_, self.error = None, ""

    def run(self):
        from mpmae_core.runtime.io.files import Cancelled

        try:
            self.result_ = self.fn(lambda f: self.setProgress(100 * f), self.isCanceled)
        except Cancelled:
            self.error = self.cancelled_message
            return False
        except Exception as exc:  # noqa: BLE001 - shown to the analyst, in words
            from .algorithms.base import error_message

            self.error = error_message(exc)
            return False
        return True
