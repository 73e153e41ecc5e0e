"""Image trust: containers-policy.json(5) policies, GPG simple signing, cosign key-based
signatures, and the `Verifier` the image store calls before it accepts an image.

Everything a signature or a registry hands us is hostile until verified: sizes are
bounded, JSON is parsed strictly, and nothing is ever passed through a shell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podunit.images.signatures import Verifier


def default_verifier() -> Verifier:
    """The verifier of the policy in force: the hook `podunit pull` looks up (see
    cli_images._store). Kept light: the verifier module loads only when called."""
    from podunit.trust.verifier import make_verifier

    return make_verifier()
