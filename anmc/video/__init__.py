"""Physics videos in and out: imageio I/O, numpy renderers of the paper's systems, windowed datasets.

    read_video / write_video / load_clips / read_truth   anmc.video.io
    synthesize / write_synthetic                         anmc.video.synth
    render_frames / geometry / object_position_px / measure_frames / pulse_profile   anmc.video.render
    FrameSequences / train_val_split / split_clips / frame_datasets                  anmc.video.dataset
"""

from anmc.video.dataset import FrameSequences, frame_datasets, split_clips, train_val_split
from anmc.video.io import Clip, VideoError, load_clips, read_truth, read_video, write_truth, write_video
from anmc.video.render import geometry, measure_frames, object_position_px, pulse_profile, render_frames
from anmc.video.synth import Synthetic, synthesize, write_synthetic

__all__ = [
    "Clip", "VideoError", "read_video", "write_video", "load_clips", "read_truth", "write_truth",
    "Synthetic", "synthesize", "write_synthetic",
    "render_frames", "geometry", "object_position_px", "measure_frames", "pulse_profile",
    "FrameSequences", "train_val_split", "split_clips", "frame_datasets",
]
