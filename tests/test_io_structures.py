"""Atomic models: reading, assemblies, and fetching by PDB id through a local HTTP server."""

from __future__ import annotations

import gzip
import http.server
import threading
from pathlib import Path

import pytest

from cryoet_forge.cli import main
from cryoet_forge.errors import InputError, NetworkError
from cryoet_forge.io.structures import cache_dir, fetch_structure, read_structure

PDB_TEXT = """REMARK 350 BIOMOLECULE: 1
REMARK 350 APPLY THE FOLLOWING TO CHAINS: A
REMARK 350   BIOMT1   1  1.000000  0.000000  0.000000        0.00000
REMARK 350   BIOMT2   1  0.000000  1.000000  0.000000        0.00000
REMARK 350   BIOMT3   1  0.000000  0.000000  1.000000        0.00000
REMARK 350   BIOMT1   2 -1.000000  0.000000  0.000000       50.00000
REMARK 350   BIOMT2   2  0.000000 -1.000000  0.000000        0.00000
REMARK 350   BIOMT3   2  0.000000  0.000000  1.000000        0.00000
ATOM      1  N   ALA A   1      11.104   6.134  -6.504  1.00 20.00           N
ATOM      2  CA  ALA A   1      11.639   6.071  -5.147  1.00 20.00           C
ATOM      3  C   ALA A   1      13.149   5.936  -5.146  1.00 20.00           C
ATOM      4  O   ALA A   1      13.750   5.427  -6.093  1.00 20.00           O
HETATM    5  O   HOH A   2      20.000  20.000  20.000  1.00 20.00           O
END
"""


def test_read_plain_and_gz_and_build_assembly(tmp_path):
    plain = tmp_path / "m.pdb"
    plain.write_text(PDB_TEXT)
    gz = tmp_path / "m.pdb.gz"
    gz.write_bytes(gzip.compress(PDB_TEXT.encode()))
    for path in (plain, gz):
        st = read_structure(path)
        assert st[0].count_atom_sites() == 4  # the water is removed
    assembly = read_structure(plain, assembly=1)
    assert assembly[0].count_atom_sites() == 8
    with pytest.raises(InputError, match="no biological assembly 2"):
        read_structure(plain, assembly=2)


def test_read_errors(tmp_path):
    with pytest.raises(InputError, match="no such structure file"):
        read_structure(tmp_path / "none.pdb")
    gz = tmp_path / "cut.cif.gz"
    gz.write_bytes(gzip.compress(PDB_TEXT.encode() * 50)[:-40])
    with pytest.raises(InputError, match="cut.cif.gz: truncated or corrupt gzip file"):
        read_structure(gz)
    empty = tmp_path / "empty.pdb"
    empty.write_text("HEADER    NOTHING\nEND\n")
    with pytest.raises(InputError, match="empty.pdb: no atoms found"):
        read_structure(empty)


@pytest.fixture
def archive(tmp_path):
    """A local stand-in for the PDB archive serving 1ABC.cif.gz, counting requests."""
    root = tmp_path / "archive"
    root.mkdir()
    cif = read_structure_text_as_cif(tmp_path)
    (root / "1ABC.cif.gz").write_bytes(gzip.compress(cif.encode()))
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def read_structure_text_as_cif(tmp_path: Path) -> str:
    plain = tmp_path / "src.pdb"
    plain.write_text(PDB_TEXT)
    st = read_structure(plain)
    st.setup_entities()
    return st.make_mmcif_document().as_string()


def test_fetch_downloads_once_then_uses_the_cache(tmp_path, archive):
    base, requests = archive
    cache = tmp_path / "cache"
    path = fetch_structure("1abc", cache=cache, base_url=base)
    assert path == cache / "structures" / "1abc.cif.gz"
    assert read_structure(path)[0].count_atom_sites() == 4
    assert len(requests) == 1
    assert fetch_structure("1ABC", cache=cache, base_url=base) == path
    assert len(requests) == 1  # never downloaded again
    with pytest.raises(NetworkError, match=r"PDB id 9zzz is unknown .*HTTP 404"):
        fetch_structure("9zzz", cache=cache, base_url=base)


def test_fetch_command_and_offline_error(tmp_path, archive, capsys, monkeypatch):
    base, requests = archive
    monkeypatch.setenv("FORGE_CACHE_DIR", str(tmp_path / "envcache"))
    monkeypatch.setenv("FORGE_PDB_URL", base)
    assert cache_dir() == tmp_path / "envcache"
    assert main(["fetch-structures", "1abc"]) == 0
    assert main(["fetch-structures", "1abc"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1abc downloaded ") and out[1].startswith("1abc cached ")
    assert len(requests) == 1
    # offline: nothing listens on the port
    with socket_closed_port() as port:
        monkeypatch.setenv("FORGE_PDB_URL", f"http://127.0.0.1:{port}")
        code = main(["fetch-structures", "2xyz"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 5 and len(err) == 1
    assert err[0].startswith("forge: error: cannot download PDB id 2xyz from http://127.0.0.1:")
    assert main(["fetch-structures", "not-an-id"]) != 0
    assert capsys.readouterr().err.strip() == "forge: error: 'not-an-id' is not a PDB id; expected 4 characters like 3j9i"


class socket_closed_port:
    """A port number that was just free (bound, then closed), so connections are refused."""

    def __enter__(self):
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        return port

    def __exit__(self, *exc):
        return False


def test_simulate_by_pdb_id_uses_the_cache(tmp_path, archive, capsys, monkeypatch):
    base, requests = archive
    monkeypatch.setenv("FORGE_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("FORGE_PDB_URL", base)
    for out in ("a", "b"):
        code = main(["simulate", "--structures", "1abc,ring", "--n-per-class", "1", "--box", "16",
                     "--voxel-size", "4", "--out", str(tmp_path / out), "--quiet"])
        assert code == 0, capsys.readouterr().err
    assert len(requests) == 1
    assert (tmp_path / "a" / "templates" / "1abc.mrc").is_file()
