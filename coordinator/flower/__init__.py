"""The coordinator's Flower ServerApp and its view of the federation."""
