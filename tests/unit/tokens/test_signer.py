from __future__ import annotations

import jwt as pyjwt
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

from deputy.clock import FakeClock
from deputy.tokens.key_ring import generate_key
from deputy.tokens.mint import b64url, compact_json
from deputy.tokens.signer import signer_for


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "PS256"])
def test_signatures_verify_with_two_independent_libraries(alg: str) -> None:
    key = generate_key(alg, FakeClock().now())
    header = b64url(compact_json({"alg": alg, "kid": key.kid}))
    signing_input = header + b"." + b64url(compact_json({"sub": "alice"}))
    token = (signing_input + b"." + b64url(signer_for(alg, key.key)(signing_input))).decode()
    public = key.key.as_dict(private=False)
    assert jws.deserialize_compact(token, key.key, algorithms=[alg]).payload == b'{"sub":"alice"}'
    pub = pyjwt.PyJWK(public, algorithm=alg)
    assert pyjwt.decode(token, pub.key, algorithms=[alg]) == {"sub": "alice"}


def test_key_of_the_wrong_family_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot sign RS256"):
        signer_for("RS256", ECKey.generate_key("P-256", private=True))
    with pytest.raises(ValueError, match="cannot sign ES256"):
        signer_for("ES256", RSAKey.generate_key(2048, private=True))
