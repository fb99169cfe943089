"""Datasets: readers for CIFAR-10/100, SVHN, MNIST / Fashion-MNIST (idx), Tiny ImageNet and ImageFolder trees
(ImageNet, ImageNet-21K, Flowers-102, Oxford-IIIT Pets, any folder of class folders) and WebDataset shards;
semantic segmentation (ADE20K folders and shards, `load_segmentation_dataset`); checksum-verified, atomic,
resumable downloads of the official files. See docs/data.md."""
from .._archive import UnsafeArchiveError, extract_archive
from .._files import Checksum, DatasetNotFoundError, search_places
from ._cifar import UnsafePickleError
from ._locate import DatasetFormatError, MissingFileError, dataset_info, ensure_downloaded
from ._sources import DATASETS, DatasetInfo, RemoteFile
from .datasets import ImageFolderDataset, TensorImageDataset, find_data_root, load_dataset
from .decode import DecodeCrop, ImageDecodeError, decode_image
from .encoded import DecodeFailure, EncodedImageDataset, check_images
from .image_text import (CaptionShardDataset, CsvImageTextDataset, caption_table_to_shards, is_image_text_dataset,
                         load_image_text_dataset, read_caption_table, write_caption_shards)
from .segmentation import (SEGMENTATION_DATASETS, ADE20KDataset, SegCrop, SegmentationDataset,
                           SegmentationShardDataset, is_segmentation_dataset, load_segmentation_dataset,
                           write_segmentation_shards)
from .shards import ShardDataset, expand_shard_urls, write_shards
from .templates import DEFAULT_TEMPLATES_FILE, class_names_from_file, imagefolder_class_names, read_templates
from .transforms import (CROP_MODES, DataConfig, ImageTransform, create_transform, load_image, normalize_images,
                         resolve_data_config)

__all__ = ["load_dataset", "TensorImageDataset", "ImageFolderDataset", "ShardDataset", "EncodedImageDataset",
           "DecodeCrop", "DecodeFailure", "check_images", "ImageDecodeError", "decode_image", "write_shards",
           "expand_shard_urls",
           "DATASETS", "dataset_info", "find_data_root",
           "ensure_downloaded", "search_places", "DatasetInfo", "RemoteFile", "Checksum", "DatasetNotFoundError",
           "MissingFileError", "DatasetFormatError", "UnsafePickleError", "UnsafeArchiveError", "extract_archive",
           "load_segmentation_dataset", "is_segmentation_dataset", "SEGMENTATION_DATASETS", "ADE20KDataset", "SegCrop",
           "SegmentationDataset", "SegmentationShardDataset", "write_segmentation_shards",
           "CsvImageTextDataset", "CaptionShardDataset", "read_caption_table", "write_caption_shards",
           "caption_table_to_shards", "load_image_text_dataset", "is_image_text_dataset",
           "read_templates", "DEFAULT_TEMPLATES_FILE", "class_names_from_file", "imagefolder_class_names",
           "DataConfig", "CROP_MODES", "resolve_data_config", "create_transform", "ImageTransform", "load_image",
           "normalize_images"]
