"""PEZ on one machine: the invert, distill, concat and samples commands, and the one PEZ flag set."""
