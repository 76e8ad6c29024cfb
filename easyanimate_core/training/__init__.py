"""LoRA training for the EasyAnimate V5.1 transformer: dataset and buckets, trainable LoRA layers, the
flow-matching loop on accelerate, atomic checkpoints, the latent/text cache and the ``train-lora`` command.

Modules import torch but not accelerate, transformers or quanto until a run needs them.
"""

from .buckets import Bucket, BucketOptions, bucket_for
from .config import TrainingConfig
from .dataset import DatasetReport, Entry, load_dataset, metadata_from_folder
from .loop import StepReport, TrainingResult, TrainingStopped, train

__all__ = ["Bucket", "BucketOptions", "DatasetReport", "Entry", "StepReport", "TrainingConfig", "TrainingResult",
           "TrainingStopped", "bucket_for", "load_dataset", "metadata_from_folder", "train"]
