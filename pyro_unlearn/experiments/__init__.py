"""The papers' reproductions, used by the ``pyro-unlearn`` command and the tutorials."""
