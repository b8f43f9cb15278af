"""Images without a registry: base images from Debian packages (bootstrap), a wheelhouse of the
server's pinned dependencies (wheelhouse), and the backend image build (build)."""
