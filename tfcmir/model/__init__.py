"""The encoders, the contrastive losses, and the models built from them."""
