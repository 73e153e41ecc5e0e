"""Image trust: containers-policy.json(5) policies, GPG simple signing, cosign key-based
signatures, and the `Verifier` the image store calls before it accepts an image.

Everything a signature or a registry hands us is hostile until verified: sizes are
bounded, JSON is parsed strictly, and nothing is ever passed through a shell.
"""
