"""Downloads through QGIS's own network stack (its proxy, SSL and authentication settings apply),
streamed to a ``.part`` file and resumed with an HTTP Range request, for ``runtime.fetch``."""

from qgis.core import QgsApplication, QgsNetworkAccessManager, QgsSettings
from qgis.PyQt.QtCore import QEventLoop, QTimer, QUrl
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

AUTHCFG_KEY = "mmearth/download_authcfg"  # an authentication configuration id, for mirrors that need one
BASE_URL_KEY = "mmearth/download_base_url"  # a mirror of the released models (empty: the catalogue's)


def base_url_setting() -> str:
    return QgsSettings().value(BASE_URL_KEY, "", type=str)


def qgis_download(url: str, part, progress=lambda done, total: None, cancelled=lambda: False,
                  timeout_s: float = 60.0) -> None:
    """``runtime.fetch``'s downloader protocol with QgsNetworkAccessManager: continue ``part``,
    raise FetchError with the reason, Cancelled on cancel (the part is kept for a resume)."""
    from pathlib import Path

    from mpmae_core.runtime.fetch import RETRIES, FetchError, manual_hint
    from mpmae_core.runtime.files import Cancelled

    part = Path(part)
    for attempt in range(RETRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        request = QNetworkRequest(QUrl(url))
        request.setAttribute(QNetworkRequest.FollowRedirectsAttribute, True)
        request.setRawHeader(b"User-Agent", b"mmearth-toolkit (QGIS fetch_model)")
        if have:
            request.setRawHeader(b"Range", f"bytes={have}-".encode())
        authcfg = QgsSettings().value(AUTHCFG_KEY, "", type=str)
        if authcfg:
            QgsApplication.authManager().updateNetworkRequest(request, authcfg)
        reply = QgsNetworkAccessManager.instance().get(request)
        state = {"file": None, "done": have, "total": None, "status": None, "error": None, "cancel": False,
                 "idle": 0}
        loop = QEventLoop()

        def on_ready():
            status = reply.attribute(QNetworkRequest.HttpStatusCodeAttribute)
            if state["file"] is None:
                state["status"] = status
                if status not in (200, 206):
                    return
                restart = status == 200
                length = reply.header(QNetworkRequest.ContentLengthHeader)
                state["total"] = (int(length) + (0 if restart else have)) if length is not None else None
                if restart:
                    state["done"] = 0
                state["file"] = open(part, "wb" if restart else "ab")
            data = bytes(reply.readAll())
            state["file"].write(data)
            state["done"] += len(data)
            state["idle"] = 0
            progress(state["done"], state["total"])

        def on_tick():
            state["idle"] += 1
            if cancelled():
                state["cancel"] = True
                reply.abort()
            elif state["idle"] * 0.2 > timeout_s:
                state["error"] = "no data for a minute"
                reply.abort()

        reply.readyRead.connect(on_ready)
        reply.finished.connect(loop.quit)
        timer = QTimer()
        timer.timeout.connect(on_tick)
        timer.start(200)
        if not reply.isFinished():
            loop.exec_()
        timer.stop()
        if reply.bytesAvailable():
            on_ready()
        status = reply.attribute(QNetworkRequest.HttpStatusCodeAttribute) or state["status"]
        err, err_text = reply.error(), reply.errorString()
        if state["file"] is not None:
            state["file"].flush()
            state["file"].close()
        reply.deleteLater()
        if state["cancel"]:
            raise Cancelled(f"download cancelled; the part kept in {part.parent} is resumed by the next fetch of the "
                            "same model")
        if status == 416 and have:
            return
        if status is not None and status >= 400:
            reason = {404: "not found (the file moved, or the download address is out of date: set a mirror in "
                           "Settings > Options > MMEarth)", 401: "authentication needed (set an authentication "
                           "configuration in Settings > Options > MMEarth)", 403: "access refused"}.get(status, err_text)
            raise FetchError(f"the server answered HTTP {status} for {url}: {reason}; or {manual_hint()}")
        if err != QNetworkReply.NoError and state["file"] is None:
            raise FetchError(f"cannot reach {url} ({state['error'] or err_text}): no network, the host is down, or "
                             f"QGIS's proxy settings block it. Try again later, or {manual_hint(url)}")
        if state["total"] is not None and state["done"] < state["total"] or err != QNetworkReply.NoError:
            if attempt < RETRIES:
                continue
            raise FetchError(f"the download of {url} stopped at {state['done']} bytes ({err_text}): run it again to "
                             "resume")
        return
