"""Stand-ins for the parties the hospital cannot reach from a test or a demo: each is a
real network service speaking the real protocol, with its own store, and imports nothing
from the backend (it is the other side of a wire)."""
