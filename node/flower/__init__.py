"""The node's Flower ClientApp: thin handlers over the node's installed services."""
