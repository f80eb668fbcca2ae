"""CertNode receipts with Python's cryptography + rfc8785: an independent
implementation the Go tests check themselves against.

  python3 receipts.py sign JWKS_OUT [ES256|EdDSA] [KEY.pem] < payloads.ndjson > receipts.ndjson
  python3 receipts.py verify JWKS                             < receipts.ndjson > verdicts (ok | fail: reason)
  python3 receipts.py jcs                                     < json-texts      > canonical forms, one per line
  python3 receipts.py deps                                    exit 0 when the pinned packages are installed

sign makes a new key of the algorithm (default ES256) unless KEY.pem, a
PKCS#8 private key, is given. Numbers are IEEE 754 doubles, as in
ECMAScript: integers past 2^53 round like any other number.
"""

import base64
import hashlib
import json
import re
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
INSTALL = f"python3 -m pip install -r {REQUIREMENTS}"


def deps_problems():
    """What differs from the pins in requirements.txt ([] when nothing)."""
    problems = []
    for line in REQUIREMENTS.read_text().split():
        name, want = line.split("==")
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed (want {want})")
            continue
        if have != want:
            problems.append(f"{name} {have} is installed, want {want}")
    return problems


if __name__ == "__main__" and (problems := deps_problems()):
    print(f"receipts.py: {'; '.join(problems)}: run `{INSTALL}` (or `make services`)", file=sys.stderr)
    sys.exit(3)

import rfc8785  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: E402
    decode_dss_signature,
    encode_dss_signature,
)

ALGS = ("ES256", "EdDSA")


class Fail(Exception):
    pass


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s):
    if not isinstance(s, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", s):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sha256(b):
    return hashlib.sha256(b).digest()


def loads(text):
    # Every JSON number is a double, as RFC 8785 and ECMAScript read it.
    return json.loads(text, parse_int=float)


def lines():
    for line in sys.stdin.buffer:
        if line.strip():
            yield line


def jwk_of(pub):
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}, "EdDSA"
    if isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP256R1):
        n = pub.public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}, "ES256"
    raise ValueError(f"unsupported key {type(pub).__name__}")


def thumbprint(jwk):
    """RFC 7638: the required members (RFC 8037 for OKP), sorted, no whitespace."""
    members = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    return b64u(sha256(json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True).encode()))


def key_alg(jwk):
    """The receipt algorithm of a JWK's key type, or None."""
    return {("EC", "P-256"): "ES256", ("OKP", "Ed25519"): "EdDSA"}.get((jwk.get("kty"), jwk.get("crv")))


def public_key(jwk):
    if key_alg(jwk) == "EdDSA":
        return ed25519.Ed25519PublicKey.from_public_bytes(unb64u(jwk["x"]))
    x, y = unb64u(jwk["x"]), unb64u(jwk["y"])
    if len(x) != 32 or len(y) != 32:
        raise ValueError("x and y must be 32 bytes")
    # public_key() refuses points that are not on the curve.
    return ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()).public_key()


def sign_input(priv, alg, data):
    if alg == "EdDSA":
        return priv.sign(data)
    r, s = decode_dss_signature(priv.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_input(pub, alg, data, sig):
    try:
        if alg == "EdDSA":
            pub.verify(sig, data)
        else:
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            pub.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Fail("bad_signature")


def sign(jwks_out, alg="ES256", key_pem=None):
    if alg not in ALGS:
        sys.exit(f"receipts.py: alg {alg!r}: want ES256 or EdDSA")
    if key_pem:
        priv = serialization.load_pem_private_key(Path(key_pem).read_bytes(), password=None)
    elif alg == "EdDSA":
        priv = ed25519.Ed25519PrivateKey.generate()
    else:
        priv = ec.generate_private_key(ec.SECP256R1())
    jwk, key_type_alg = jwk_of(priv.public_key())
    if key_type_alg != alg:
        sys.exit(f"receipts.py: the key is for {key_type_alg}, not {alg}")
    kid = thumbprint(jwk)
    Path(jwks_out).write_text(json.dumps({"keys": [{**jwk, "kid": kid, "alg": alg, "use": "sig"}]}))
    protected = b64u(json.dumps({"alg": alg, "kid": kid}, separators=(",", ":")).encode())
    for line in lines():
        jcs = rfc8785.dumps(loads(line))
        signing_input = f"{protected}.{b64u(jcs)}".encode()
        sig = b64u(sign_input(priv, alg, signing_input))
        # Members in the Go signer's order, the payload in its canonical form.
        head = json.dumps({"protected": protected}, separators=(",", ":"))[:-1]
        tail = json.dumps(
            {
                "signature": sig,
                "kid": kid,
                "payload_jcs_sha256": b64u(sha256(jcs)),
                "receipt_id": b64u(sha256(signing_input + b"." + sig.encode())),
            },
            separators=(",", ":"),
        )[1:]
        sys.stdout.write(f'{head},"payload":{jcs.decode()},{tail}\n')


def usable_keys(jwks):
    """The keys a receipt may name, by kid; keys of other types or uses are skipped."""
    keys = {}
    for jwk in jwks.get("keys", []):
        alg = isinstance(jwk, dict) and key_alg(jwk)
        if not alg or jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
            continue
        try:
            keys[jwk.get("kid", thumbprint(jwk))] = (jwk, alg, public_key(jwk))
        except (KeyError, ValueError):
            continue
    return keys


def check(r, keys):
    if not isinstance(r, dict) or not all(isinstance(r.get(m), str) for m in ("protected", "signature", "kid")) or not isinstance(r.get("payload"), dict):
        raise Fail("malformed")
    try:
        header = json.loads(unb64u(r["protected"]))
        sig = unb64u(r["signature"])
    except ValueError:
        raise Fail("malformed")
    if not isinstance(header, dict):
        raise Fail("malformed")
    if header.get("alg") not in ALGS:
        raise Fail("unsupported_alg")
    if header.get("kid") != r["kid"]:
        raise Fail("kid_mismatch")
    if r["kid"] not in keys:
        raise Fail("unknown_kid")
    jwk, alg, pub = keys[r["kid"]]
    if alg != header["alg"]:
        raise Fail("alg_key_mismatch")
    if thumbprint(jwk) != r["kid"]:
        raise Fail("kid_not_thumbprint")
    try:
        jcs = rfc8785.dumps(r["payload"])
    except rfc8785.CanonicalizationError:
        raise Fail("malformed")
    if r.get("payload_jcs_sha256") and r["payload_jcs_sha256"] != b64u(sha256(jcs)):
        raise Fail("payload_hash_mismatch")
    if len(sig) != 64:
        raise Fail("bad_signature")
    signing_input = f"{r['protected']}.{b64u(jcs)}".encode()
    verify_input(pub, alg, signing_input, sig)
    if r.get("receipt_id") and r["receipt_id"] != b64u(sha256(signing_input + b"." + r["signature"].encode())):
        raise Fail("receipt_id_mismatch")


def verify(jwks_path):
    keys = usable_keys(json.loads(Path(jwks_path).read_text()))
    for line in lines():
        try:
            check(loads(line), keys)
            verdict = "ok"
        except ValueError:
            verdict = "fail: malformed"
        except Fail as e:
            verdict = f"fail: {e}"
        sys.stdout.write(verdict + "\n")


def jcs():
    for line in lines():
        sys.stdout.write(rfc8785.dumps(loads(line)).decode() + "\n")


def main(argv):
    modes = {"sign": (sign, 1, 3), "verify": (verify, 1, 1), "jcs": (jcs, 0, 0), "deps": (lambda: None, 0, 0)}
    if not argv or argv[0] not in modes or not modes[argv[0]][1] <= len(argv) - 1 <= modes[argv[0]][2]:
        sys.exit("usage: receipts.py sign JWKS_OUT [ES256|EdDSA] [KEY.pem] | verify JWKS | jcs | deps")
    fn = modes[argv[0]][0]
    fn(*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
