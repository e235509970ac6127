"""Sources given as URLs, served by a real HTTP server on 127.0.0.1: download once (cache),
unpack a zip, verify SHA-256, refuse unsafe archives, and say what to do without a network."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from functools import partial

import pytest

from schemas.config import DataConfig, SourceConfig
from schemas.errors import DataError, SourceUnavailable
from tasks.data import read_source
from tasks.download import download_path
from tests.conftest import SHARED_DATA

ML100K = SHARED_DATA / "ml-100k_recbole"


@pytest.fixture()
def server(tmp_path):
    """Serves tmp_path/www; `requests` lists the paths asked for."""
    www = tmp_path / "www"
    www.mkdir()
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}", asked
    httpd.shutdown()
    httpd.server_close()


def _zip_ml100k(path):
    with zipfile.ZipFile(path, "w") as zf:  # the layout of GroupLens' zips: one top folder
        for name in ("ml-100k.inter", "ml-100k.item"):
            zf.write(ML100K / name, f"ml-100k/{name}")


def _cfg(root, url, **source):
    return DataConfig(data_root=root, source=SourceConfig(format="recbole", path=url, **source))


@pytest.mark.skipif(not ML100K.is_dir(), reason="needs ../shared/data")
def test_zip_url_is_downloaded_once_unpacked_and_read_like_the_local_folder(tmp_path, server):
    www, base, asked = server
    _zip_ml100k(www / "ml-100k.zip")
    digest = hashlib.sha256((www / "ml-100k.zip").read_bytes()).hexdigest()
    url = f"{base}/ml-100k.zip"
    cfg = _cfg(tmp_path / "root", url, sha256={url: digest})

    inter, items = read_source(cfg)
    local_inter, local_items = read_source(DataConfig(
        data_root=tmp_path / "root", input_roots=[ML100K], source=SourceConfig(format="recbole", path=str(ML100K))))
    assert inter.equals(local_inter) and items.equals(local_items)
    assert len(inter) == 100_000
    assert download_path(url, cfg.data_root).is_file()
    assert not list((tmp_path / "root").rglob("*.part"))

    read_source(cfg)  # the cache: no second request
    assert asked == ["/ml-100k.zip"]


def test_checksum_mismatch_stops_and_keeps_nothing(tmp_path, server):
    www, base, _ = server
    (www / "inter.csv").write_text("user_id,item_id,timestamp\n1,2,900000000\n")
    url = f"{base}/inter.csv"
    cfg = _cfg(tmp_path / "root", url, sha256={url: "0" * 64})
    with pytest.raises(DataError, match="SHA-256 .* but source.sha256 expects 0000"):
        read_source(cfg)
    assert not download_path(url, cfg.data_root).exists()


def test_missing_url_is_a_data_error(tmp_path, server):
    _, base, _ = server
    with pytest.raises(DataError, match="answered HTTP 404"):
        read_source(_cfg(tmp_path / "root", f"{base}/nope.zip"))


@pytest.mark.skipif(not ML100K.is_dir(), reason="needs ../shared/data")
def test_no_network_says_where_to_place_the_file_and_then_works_offline(tmp_path, server):
    www, base, _ = server
    url = "http://127.0.0.1:9/ml-100k.zip"  # port 9 (discard): nothing listens, as offline
    cfg = _cfg(tmp_path / "root", url)
    target = download_path(url, cfg.data_root)
    with pytest.raises(SourceUnavailable) as err:
        read_source(cfg)
    assert str(target) in str(err.value)
    assert not target.exists() and not target.with_name(target.name + ".part").exists()

    _zip_ml100k(target)  # what the message asks a person to do
    inter, _ = read_source(cfg)
    assert len(inter) == 100_000


def test_archive_member_outside_the_folder_is_refused(tmp_path, server):
    www, base, _ = server
    with zipfile.ZipFile(www / "evil.zip", "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(DataError, match="points outside the archive"):
        read_source(_cfg(tmp_path / "root", f"{base}/evil.zip"))
    assert not (tmp_path / "escaped.txt").exists() and not list((tmp_path / "root").rglob("escaped.txt"))
