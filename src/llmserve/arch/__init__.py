"""Architecture tables: which model families exist and how an HF config.json maps onto them."""
