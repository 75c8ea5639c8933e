"""The registry (name → mixer class) and the contract every mixer satisfies (`registry.Mixer`).
The mixers themselves live in the top-level `architectures/`, installed as `ablate.architectures`."""
