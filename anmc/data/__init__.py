"""Videos in: imageio reading and writing, truth files, and the windowed frame datasets training reads.

    read_video / write_video / load_clips / read_truth / write_truth   anmc.data.io
    FrameSequences / train_val_split / split_clips / frame_datasets     anmc.data.dataset
    estimate_background / remove_background / without_background        anmc.data.background
"""

from anmc.data.background import estimate_background, remove_background, without_background
from anmc.data.dataset import FrameSequences, frame_datasets, split_clips, train_val_split
from anmc.data.io import Clip, VideoError, load_clips, read_truth, read_video, write_truth, write_video

__all__ = [
    "Clip", "VideoError", "read_video", "write_video", "load_clips", "read_truth", "write_truth",
    "FrameSequences", "train_val_split", "split_clips", "frame_datasets",
    "estimate_background", "remove_background", "without_background",
]
