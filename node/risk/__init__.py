"""Node-side risk model: local DP-SGD training, vectorised scoring, the versioned model store."""
