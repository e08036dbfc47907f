"""sa2va-ray: fine-tune, sweep and evaluate Sa2VA (InternVL3 + SAM2) with Ray Train, Tune and Data.

Importing the package registers the Sa2VA config and model with transformers' Auto classes, so that
``transformers.AutoModel.from_pretrained(dir)`` loads a saved model (no ``trust_remote_code``).
"""

from sa2va_ray import model as model  # noqa: E402  (registers Sa2VAConfig/Sa2VAModel with AutoConfig/AutoModel)

__version__ = "0.1.0"
