"""flashfit: deploy and operate the FlashFit recommendation service.

Kept import-light on purpose: `flashfit --help` must not pull in docker, boto3 or torch.
"""

__version__ = "0.1.0"
