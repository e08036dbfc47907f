"""sa2va-ray: fine-tune, sweep and evaluate Sa2VA (InternVL3 + SAM2) with Ray Train, Tune and Data.

Importing the package arranges for the Sa2VA config and model to be registered with transformers' Auto classes
(:mod:`sa2va_ray.model.auto`), so that ``transformers.AutoModel.from_pretrained(dir)`` loads a saved model (no
``trust_remote_code``). Nothing heavy is imported here: ``import sa2va_ray.data`` stays free of torch.
"""

from sa2va_ray.model.auto import install_auto_registration

install_auto_registration()

__version__ = "0.1.0"
