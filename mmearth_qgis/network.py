"""Downloads through QGIS's own network stack (its proxy, SSL and authentication settings apply),
streamed to a ``.part`` file and resumed with HTTP Range and If-Range, for ``runtime.fetch``."""

from qgis.core import QgsApplication, QgsNetworkAccessManager, QgsSettings
from qgis.PyQt.QtCore import QEventLoop, QTimer, QUrl
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

AUTHCFG_KEY = "mmearth/download_authcfg"  # an authentication configuration id, for mirrors that need one
BASE_URL_KEY = "mmearth/download_base_url"  # a mirror of the released models (empty: the catalogue's)


def base_url_setting() -> str:
    return QgsSettings().value(BASE_URL_KEY, "", type=str)


def qgis_download(url: str, part, progress=lambda done, total: None, cancelled=lambda: False,
                  timeout_s: float = 60.0, log=lambda m: None) -> None:
    """``runtime.fetch``'s downloader protocol with QgsNetworkAccessManager: continue ``part`` only
    where the server's validators show the same file (``fetch.PartFile``: Range with If-Range), raise
    FetchError with the reason, Cancelled on cancel (the part is kept for a resume)."""
    from pathlib import Path

    from mpmae_core.runtime.releases.fetch import RETRIES, FetchError, PartFile, Restart, manual_hint, write_error
    from mpmae_core.runtime.io.files import Cancelled

    partfile = PartFile(Path(part))
    if partfile.complete(url):
        return
    restarted = False
    for attempt in range(RETRIES + 2):
        headers = partfile.request_headers(url, log)
        have = partfile.size()
        request = QNetworkRequest(QUrl(url))
        request.setAttribute(QNetworkRequest.FollowRedirectsAttribute, True)
        request.setRawHeader(b"User-Agent", b"mmearth-toolkit (QGIS fetch_model)")
        for key, value in headers.items():
            request.setRawHeader(key.encode(), value.encode())
        authcfg = QgsSettings().value(AUTHCFG_KEY, "", type=str)
        if authcfg:
            QgsApplication.authManager().updateNetworkRequest(request, authcfg)
        reply = QgsNetworkAccessManager.instance().get(request)
        state = {"file": None, "done": have, "total": None, "status": None, "error": None, "cancel": False,
                 "idle": 0, "restart": None, "oserror": None}
        loop = QEventLoop()

        def header(name, reply=reply):
            value = bytes(reply.rawHeader(name.encode())).decode("latin-1").strip()
            return value or None

        def on_ready():
            if state["restart"] or state["oserror"]:
                return
            status = reply.attribute(QNetworkRequest.HttpStatusCodeAttribute)
            try:
                if state["file"] is None:
                    state["status"] = status
                    if status not in (200, 206):
                        return
                    mode, state["done"], state["total"] = partfile.begin(url, status, header)
                    if have and mode == "wb":
                        log(f"the file at {url} changed since the partial download (or the server cannot resume): "
                            "downloading it from the start")
                    state["file"] = open(partfile.part, mode)
                data = bytes(reply.readAll())
                state["file"].write(data)
            except Restart as exc:
                state["restart"] = str(exc)
                reply.abort()
                return
            except OSError as exc:
                state["oserror"] = exc
                reply.abort()
                return
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
            try:
                state["file"].flush()
                state["file"].close()
            except OSError as exc:
                state["oserror"] = state["oserror"] or exc
        reply.deleteLater()
        if state["oserror"] is not None:
            exc = state["oserror"]
            raise write_error(exc, partfile, total=state["total"])
        if state["cancel"]:
            raise Cancelled(f"download cancelled; the part kept in {partfile.part.parent} is resumed by the next "
                            "fetch of the same model")
        if state["restart"] or (status == 416 and have):
            if restarted:
                raise FetchError(f"the server at {url} answers range requests inconsistently: {manual_hint(url)}")
            log(f"the server refused to continue the partial download ({state['restart'] or 'HTTP 416'}): "
                f"{partfile.part.name} was discarded, downloading from the start")
            partfile.discard()
            restarted = True
            continue
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
    raise FetchError(f"the download of {url} could not be completed: run it again")
