"""Asset root resolution, checksum verification and the offline failure path of fetching."""

import shutil
import urllib.error
import urllib.request

import pytest

from datamodules import assets
from datamodules.assets import AssetError


@pytest.fixture
def mnist_copy(tmp_path):
    """A copy of the real MNIST asset group in a temporary assets root."""
    root = assets.resolve_assets_root()
    shutil.copytree(root / "mnist", tmp_path / "mnist")
    return tmp_path


def test_manifest_covers_every_shared_asset_file():
    root = assets.resolve_assets_root()
    on_disk = {p.relative_to(root).as_posix() for g in assets.GROUPS for p in (root / g).rglob("*") if p.is_file()}
    assert on_disk == set(assets.load_manifest())


def test_mnist_checksums_match_the_published_provenance():
    # sha256 column of mnist/PROVENANCE.md
    manifest = assets.load_manifest()
    assert manifest["mnist/train-images-idx3-ubyte.gz"]["sha256"] == (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    )
    assert manifest["mnist/t10k-labels-idx1-ubyte.gz"]["sha256"] == (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    )


def test_root_resolution_order(tmp_path, monkeypatch):
    env_root = tmp_path / "env"
    arg_root = tmp_path / "arg"
    env_root.mkdir()
    arg_root.mkdir()
    monkeypatch.setenv(assets.ENV_ASSETS, str(env_root))
    assert assets.resolve_assets_root(arg_root) == arg_root.resolve()
    assert assets.resolve_assets_root() == env_root.resolve()
    monkeypatch.delenv(assets.ENV_ASSETS)
    assert assets.resolve_assets_root() == assets.DEFAULT_ASSETS_ROOT.resolve()


def test_missing_root_names_it_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(AssetError, match="nowhere.*does not exist.*assets_root.*SCENEMOTION_ASSETS"):
        assets.resolve_assets_root(missing)


def test_verified_group_passes(mnist_copy):
    assert assets.verify_group("mnist", mnist_copy) == mnist_copy.resolve()


def test_missing_file_is_named(mnist_copy):
    (mnist_copy / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(AssetError, match="t10k-labels-idx1-ubyte.gz is missing"):
        assets.verify_group("mnist", mnist_copy)


def test_corrupt_file_reports_expected_and_actual(mnist_copy):
    path = mnist_copy / "mnist" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    actual = assets.sha256_of(path)
    expected = assets.load_manifest()["mnist/t10k-labels-idx1-ubyte.gz"]["sha256"]
    with pytest.raises(AssetError, match=f"corrupt: SHA-256 {actual} but expected {expected}"):
        assets.asset_path("mnist/t10k-labels-idx1-ubyte.gz", mnist_copy)


def test_unknown_group_is_refused():
    with pytest.raises(AssetError, match="Unknown asset group 'cifar'"):
        assets.manifest_files("cifar")


def test_fetch_offline_fails_cleanly_and_leaves_nothing_half_written(mnist_copy, monkeypatch):
    """No internet here: every mirror fails, the error names the file, no temp file remains."""
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    (mnist_copy / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(AssetError, match="Could not fetch mnist/t10k-labels-idx1-ubyte.gz.*network is unreachable"):
        assets.fetch_assets(mnist_copy, groups=["mnist"])
    assert calls and all("t10k-labels-idx1-ubyte.gz" in url for url in calls)
    leftovers = [p.name for p in (mnist_copy / "mnist").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_fetch_skips_files_that_are_already_valid(mnist_copy, monkeypatch):
    def refuse(url, timeout=None):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    assets.fetch_assets(mnist_copy, groups=["mnist"])


def test_verify_command_reports_corruption(mnist_copy, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SCENEMOTION_CACHE", str(tmp_path / "cache"))  # verify also checks the caches: never the real one
    (mnist_copy / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"not mnist")
    with pytest.raises(SystemExit, match="error: .*train-labels-idx1-ubyte.gz is corrupt"):
        assets.main(["verify", "--root", str(mnist_copy)])
