"""Generated from proto-vendor/ by `make gen`; do not edit."""
