"""REST request and response models (pydantic), one module per backend."""
