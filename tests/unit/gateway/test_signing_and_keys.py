import time

from app.domain.keys import KEY_PREFIX, generate_key, hash_key, key_hint
from app.storage.signing import UrlSigner


def test_signed_url_verifies_only_for_its_own_output_and_until_it_expires() -> None:
    signer = UrlSigner("secret-a", ttl_seconds=60)
    expires, sig = signer.sign("job1", "out1")
    assert expires > time.time() + 59
    assert signer.verify("job1", "out1", str(expires), sig)
    # Bound to the output and the job: the same signature opens nothing else.
    assert not signer.verify("job1", "out2", str(expires), sig)
    assert not signer.verify("job2", "out1", str(expires), sig)
    # Changing the expiry breaks the signature; another secret does not verify.
    assert not signer.verify("job1", "out1", str(expires + 60), sig)
    assert not UrlSigner("secret-b", 60).verify("job1", "out1", str(expires), sig)


def test_expired_or_malformed_signatures_are_refused() -> None:
    signer = UrlSigner("secret", ttl_seconds=60)
    expires, sig = signer.sign("j", "o", now=time.time() - 10_000)
    assert not signer.verify("j", "o", str(expires), sig)
    assert not signer.verify("j", "o", "not-a-number", sig)
    assert not signer.verify("j", "o", None, sig)
    assert not signer.verify("j", "o", str(expires), None)


def test_url_carries_expires_and_signature() -> None:
    url = UrlSigner("s", 60).url("J", "O")
    assert url.startswith("/v1/jobs/J/outputs/O?expires=")
    assert "&signature=" in url


def test_keys_are_prefixed_random_and_hashed() -> None:
    a, b = generate_key(), generate_key()
    assert a.startswith(KEY_PREFIX) and b.startswith(KEY_PREFIX)
    assert a != b and len(a) > 40
    assert hash_key(a) != hash_key(b) and len(hash_key(a)) == 64
    assert a not in hash_key(a)
    assert key_hint(a) == a[:8]


async def test_local_storage_streams_small_and_large_files_and_refuses_escapes(tmp_path) -> None:  # noqa: ANN001
    import hashlib

    import pytest

    from app.storage.local import LocalStorage

    storage = LocalStorage(tmp_path)
    big = [bytes([i % 251]) * 300_000 for i in range(10)]  # 3 MB in pieces: written in parts

    async def gen(parts):  # noqa: ANN001, ANN202
        for part in parts:
            yield part

    for key, parts in (("a/small.png", [b"\\x89PNG", b"tiny"]), ("b/big.bin", big)):
        obj = await storage.write_stream(key, gen(parts))
        data = b"".join(parts)
        assert obj.size == len(data) and obj.sha256 == hashlib.sha256(data).hexdigest()
        assert storage.path_for(key).read_bytes() == data
    assert not list(tmp_path.rglob("*.part"))

    async def broken():  # noqa: ANN202
        yield b"x" * 2_000_000
        raise RuntimeError("backend went away")

    with pytest.raises(RuntimeError):
        await storage.write_stream("c/partial.bin", broken())
    assert not storage.path_for("c/partial.bin").exists() and not list(tmp_path.rglob("*.part"))
    for bad in ("../escape", "/abs/path", ""):
        with pytest.raises(ValueError):
            storage.path_for(bad)
