"""The variants under comparison: one mixer family per file, each registering its mixers on
import (`ablate.mixers.registry` finds them by name). Installed as `ablate.architectures`."""
