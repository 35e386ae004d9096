"""The shipped files: found, verified once (with a stamp), decompressed atomically, and every
way they can be bad or unwritable gets a clear message with nothing left behind."""

import gzip
import json
import os
import shutil
import urllib.error
import zlib
from pathlib import Path

import pytest
from torchvision import datasets

from mnist_dissected import data, mnist_files

SHIPPED = Path(__file__).resolve().parent.parent / "data"
NAME = "t10k-labels-idx1-ubyte"


@pytest.fixture
def no_download(monkeypatch):
    """Make any download attempt fail as it does offline, and record that it was tried."""
    tried = []

    def offline(self):
        tried.append(self.root)
        raise RuntimeError("Error downloading: <urlopen error Name or service not known>")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    monkeypatch.delenv(mnist_files.ENV_VAR, raising=False)
    return tried


def copy_shipped(root: Path, *names: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SHIPPED / f"{name}.gz", root / f"{name}.gz")


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.tmp"))


# --------------------------------------------------------------------------- shipped files


def test_shipped_files_have_the_documented_checksums():
    readme = (SHIPPED / "README.md").read_text()
    for name, digest in mnist_files.RESOURCES.items():
        assert mnist_files.sha256_of(SHIPPED / f"{name}.gz", gzipped=True) == digest
        assert digest in readme, f"data/README.md must list the checksum of {name}"


def test_root_argument_then_env_then_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv(mnist_files.ENV_VAR, raising=False)
    assert mnist_files.data_root() == SHIPPED
    monkeypatch.setenv(mnist_files.ENV_VAR, str(tmp_path / "env"))
    assert mnist_files.data_root() == tmp_path / "env"
    assert mnist_files.data_root(tmp_path / "arg") == tmp_path / "arg"


def test_shipped_gz_files_are_verified_and_decompressed_without_download(tmp_path, no_download):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    test = data.load_mnist(train=False, root=tmp_path)
    assert len(test) == 10_000 and no_download == []
    for name, digest in mnist_files.RESOURCES.items():
        raw = tmp_path / "MNIST" / "raw" / name
        assert mnist_files.sha256_of(raw) == digest
    assert leftovers(tmp_path) == [], "no temporary files left"


def test_missing_files_offline_name_the_files_the_places_and_the_fix(tmp_path, no_download):
    copy_shipped(tmp_path, "t10k-labels-idx1-ubyte")
    with pytest.raises(mnist_files.MNISTNotFoundError) as err:
        data.load_mnist(train=False, root=tmp_path)
    message = str(err.value)
    assert no_download, "a download is tried first"
    for name in ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"]:
        assert name in message
    assert "t10k-labels-idx1-ubyte.gz," not in message.splitlines()[0], "that one is there"
    assert str(tmp_path / "MNIST" / "raw") in message and str(tmp_path) in message
    assert mnist_files.ENV_VAR in message and "Name or service not known" in message


def test_missing_files_without_download_are_not_downloaded(tmp_path, no_download):
    with pytest.raises(mnist_files.MNISTNotFoundError, match="MNIST files not found"):
        data.load_mnist(root=tmp_path, download=False)
    assert no_download == []


def test_downloader_that_raises_urlerror_is_reported_too(tmp_path, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(mnist_files.MNISTNotFoundError, match="no network"):
        data.load_mnist(root=tmp_path)


def damaged_gz(damage: str) -> bytes:
    """The shipped test labels, damaged in one of the ways a real download or copy is."""
    compressed = (SHIPPED / f"{NAME}.gz").read_bytes()
    good = gzip.decompress(compressed)
    if damage == "wrong content":  # a valid gzip of other bytes
        bad = bytearray(good)
        bad[100] ^= 0xFF
        return gzip.compress(bytes(bad))
    if damage == "truncated":
        return compressed[:2000]
    if damage == "crc":  # the stored CRC-32 at the end does not match
        return compressed[:-8] + bytes(b ^ 0xFF for b in compressed[-8:-4]) + compressed[-4:]
    if damage == "deflate damaged in the middle":
        middle = bytearray(compressed)
        for i in range(len(middle) // 2, len(middle) // 2 + 16):
            middle[i] ^= 0x5A
        return bytes(middle)
    if damage == "html page":
        return b"<!DOCTYPE html><html><body>mirror error page</body></html>"
    if damage == "git lfs pointer":
        return (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:ff7bcfd416de33731a"
            b"308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2\nsize 4542\n"
        )
    if damage == "empty":
        return b""
    raise AssertionError(damage)


DAMAGES = [
    "wrong content",
    "truncated",
    "crc",
    "deflate damaged in the middle",
    "html page",
    "git lfs pointer",
    "empty",
]


def test_damage_in_the_middle_of_the_deflate_stream_is_what_zlib_rejects():
    with pytest.raises(zlib.error):  # what used to escape as a raw traceback
        gzip.decompress(damaged_gz("deflate damaged in the middle"))


@pytest.mark.parametrize("damage", DAMAGES)
def test_corrupt_or_truncated_gz_is_named_with_its_checksum_and_kept(tmp_path, no_download, damage):
    name = NAME
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    gz = tmp_path / f"{name}.gz"
    gz.write_bytes(damaged_gz(damage))
    damaged = gz.read_bytes()
    with pytest.raises(mnist_files.CorruptDataError) as err:
        data.load_mnist(train=False, root=tmp_path)
    assert str(gz) in str(err.value) and mnist_files.RESOURCES[name] in str(err.value)
    assert gz.read_bytes() == damaged, "the user's file is left as it is"
    assert not (tmp_path / "MNIST" / "raw" / name).exists(), "nothing bad is used"
    assert no_download == [], "never silently replaced by a download"
    assert "corrupt or truncated" in str(err.value)
    assert leftovers(tmp_path) == []


def test_corrupt_decompressed_file_is_refused_and_kept(tmp_path, no_download):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    mnist_files.prepare_raw(tmp_path)
    raw = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    raw.write_bytes(raw.read_bytes()[:-10])
    with pytest.raises(
        mnist_files.CorruptDataError, match=mnist_files.RESOURCES["train-labels-idx1-ubyte"]
    ):
        data.load_mnist(root=tmp_path)
    assert raw.exists()


def test_each_file_is_hashed_once_then_trusted_by_its_stamp(tmp_path, no_download, monkeypatch):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    assert mnist_files.prepare_raw(tmp_path) == []
    stamps = sorted(
        p.name for p in mnist_files.raw_folder(tmp_path).glob("*" + mnist_files.STAMP_SUFFIX)
    )
    assert stamps == sorted(n + mnist_files.STAMP_SUFFIX for n in mnist_files.RESOURCES)
    hashed = []
    monkeypatch.setattr(mnist_files, "sha256_of", lambda path, **kw: hashed.append(path))
    monkeypatch.setattr(mnist_files, "_decompress_verified", lambda gz, *a, **k: hashed.append(gz))
    assert mnist_files.prepare_raw(tmp_path) == [] and hashed == [], "nothing hashed again"


def test_a_replaced_gz_is_detected_despite_the_stamp(tmp_path, no_download):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    mnist_files.prepare_raw(tmp_path)
    gz = tmp_path / f"{NAME}.gz"
    gz.write_bytes(damaged_gz("wrong content"))
    with pytest.raises(mnist_files.CorruptDataError, match=str(gz)):
        mnist_files.prepare_raw(tmp_path)


def test_a_changed_decompressed_copy_is_detected_despite_the_stamp(tmp_path, no_download):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    mnist_files.prepare_raw(tmp_path)
    raw = mnist_files.raw_folder(tmp_path) / NAME
    content = bytearray(raw.read_bytes())
    content[-1] ^= 1
    raw.write_bytes(bytes(content))  # same size, new modification time
    with pytest.raises(mnist_files.CorruptDataError, match=str(raw)):
        mnist_files.prepare_raw(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_folder_blames_the_folder_not_the_input(tmp_path, no_download):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    mnist_files.raw_folder(tmp_path).mkdir(parents=True)
    mnist_files.raw_folder(tmp_path).chmod(0o555)
    try:
        with pytest.raises(mnist_files.DataWriteError, match="is fine and was not changed"):
            mnist_files.prepare_raw(tmp_path)
    finally:
        mnist_files.raw_folder(tmp_path).chmod(0o755)


def refuse_writes(monkeypatch) -> None:
    """What a read-only folder does to a writer, also for root (whom chmod does not stop)."""
    import errno

    import mnist_dissected.files as files

    def read_only_mkstemp(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only_mkstemp)


def test_read_only_folder_blames_the_folder_even_for_root(tmp_path, no_download, monkeypatch):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    refuse_writes(monkeypatch)
    with pytest.raises(mnist_files.DataWriteError, match="is fine and was not changed"):
        mnist_files.prepare_raw(tmp_path)
    assert not (mnist_files.raw_folder(tmp_path) / "t10k-labels-idx1-ubyte").exists()


def test_read_only_folder_with_verified_files_loads_and_hashes_again(
    tmp_path, no_download, monkeypatch
):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    mnist_files.prepare_raw(tmp_path)
    stamps = sorted(mnist_files.raw_folder(tmp_path).glob(f"*{mnist_files.STAMP_SUFFIX}"))
    assert len(stamps) == len(mnist_files.RESOURCES)
    for stamp in stamps:
        stamp.unlink()
    refuse_writes(monkeypatch)
    assert mnist_files.prepare_raw(tmp_path) == [], (
        "the data loads although no stamp can be written"
    )
    assert list(mnist_files.raw_folder(tmp_path).glob(f"*{mnist_files.STAMP_SUFFIX}")) == []
    assert leftovers(tmp_path) == []


def test_a_file_where_the_folder_should_be_blames_the_place_written_to(tmp_path, no_download):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    (tmp_path / "MNIST").write_text("not a folder")
    with pytest.raises(mnist_files.DataWriteError) as err:
        mnist_files.prepare_raw(tmp_path)
    message = str(err.value)
    assert "could not write the decompressed copy" in message and "is fine" in message
    assert "corrupt" not in message


def test_a_full_disk_blames_the_disk_not_the_input(tmp_path, no_download, monkeypatch):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    import errno

    import mnist_dissected.files as files

    real = files.tempfile.mkstemp

    def full_disk_mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name  # every write: ENOSPC

    monkeypatch.setattr(files.tempfile, "mkstemp", full_disk_mkstemp)
    with pytest.raises(mnist_files.DataWriteError, match="Make room on the disk") as err:
        mnist_files.prepare_raw(tmp_path)
    assert err.value.__cause__.errno == errno.ENOSPC
    assert leftovers(tmp_path) == [], "the temporary file is removed"


def test_a_mistyped_folder_gets_no_empty_tree(tmp_path, no_download):
    typo = tmp_path / "dta"
    with pytest.raises(mnist_files.MNISTNotFoundError, match=str(typo)):
        data.load_mnist(root=typo)
    assert not typo.exists(), "nothing created where nothing was written"
    typo.mkdir()
    with pytest.raises(mnist_files.MNISTNotFoundError):
        data.load_mnist(root=typo)
    assert list(typo.iterdir()) == []


def test_the_message_names_the_flag_the_user_typed(tmp_path, no_download):
    with pytest.raises(mnist_files.MNISTNotFoundError, match=r"\(from --data\)"):
        data.load_mnist(root=tmp_path, root_given_as="--data")


# --------------------------------------------------------------------------- bad input, round two


@pytest.mark.parametrize("content", ["[]", "7", '"x"', "null", "{not json"])
def test_a_stamp_that_is_no_json_object_is_stale_not_a_crash(
    tmp_path, no_download, monkeypatch, content
):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    mnist_files.prepare_raw(tmp_path)
    raw = mnist_files.raw_folder(tmp_path) / NAME
    stamp = raw.with_name(raw.name + mnist_files.STAMP_SUFFIX)
    stamp.write_text(content)
    hashed = []
    real_sha256_of = mnist_files.sha256_of

    def sha256_of(path, **kwargs):
        hashed.append(path)
        return real_sha256_of(path, **kwargs)

    monkeypatch.setattr(mnist_files, "sha256_of", sha256_of)
    assert mnist_files.prepare_raw(tmp_path) == []
    assert hashed == [raw], "verified again, as a file never stamped"
    assert json.loads(stamp.read_text())["sha256"] == mnist_files.RESOURCES[NAME], "stamped anew"


class CountingReads:
    """A decompressed stream that counts the bytes read from it."""

    def __init__(self, stream):
        self.stream, self.bytes_read = stream, 0

    def read(self, size=-1):
        chunk = self.stream.read(size)
        self.bytes_read += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stream.close()


def test_a_gzip_bomb_is_refused_as_soon_as_it_is_longer_than_its_file(
    tmp_path, no_download, monkeypatch
):
    """8 MB of zeros in 8 KB, named as the test labels (10,008 bytes): reading stops there."""
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    bomb = tmp_path / f"{NAME}.gz"
    bomb.write_bytes(gzip.compress(bytes(8 << 20)))
    streams = []
    real_open = gzip.open

    def counting_open(*args, **kwargs):
        streams.append(CountingReads(real_open(*args, **kwargs)))
        return streams[-1]

    monkeypatch.setattr(gzip, "open", counting_open)
    with pytest.raises(mnist_files.CorruptDataError) as err:
        mnist_files.prepare_raw(tmp_path)
    assert streams[-1].bytes_read <= 10_008 + 1, "not one byte read past what tells it is too long"
    message = str(err.value)
    assert str(bomb) in message and "decompresses to more than the 10,008 bytes" in message
    assert not (mnist_files.raw_folder(tmp_path) / NAME).exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "name, holds",
    [
        ("t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"),  # train and test swapped: longer
        ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"),  # ... and shorter
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),  # labels where the images belong
    ],
)
def test_another_mnist_file_under_a_name_is_said_to_be_that_file(
    tmp_path, no_download, name, holds
):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    gz = tmp_path / f"{name}.gz"
    shutil.copy(SHIPPED / f"{holds}.gz", gz)
    with pytest.raises(mnist_files.CorruptDataError) as err:
        mnist_files.prepare_raw(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{gz} holds the wrong MNIST file: this is {holds}.gz, not {name}.gz")
    assert "corrupt" not in message and "left as it is" in message
    assert gz.read_bytes() == (SHIPPED / f"{holds}.gz").read_bytes()
    assert not (mnist_files.raw_folder(tmp_path) / name).exists() and leftovers(tmp_path) == []


def test_another_decompressed_file_under_a_name_is_said_to_be_that_file(tmp_path, no_download):
    copy_shipped(tmp_path, *mnist_files.RESOURCES)
    mnist_files.prepare_raw(tmp_path)
    raw = mnist_files.raw_folder(tmp_path) / NAME
    raw.write_bytes((mnist_files.raw_folder(tmp_path) / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(
        mnist_files.CorruptDataError,
        match=f"this is train-labels-idx1-ubyte, not {NAME} ",
    ):
        mnist_files.prepare_raw(tmp_path)
