"""Wire contracts (.proto) and the code generated from them."""
