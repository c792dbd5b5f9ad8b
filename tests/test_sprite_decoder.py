"""The sprite decoder (`--decoder sprite`): a learned sprite drawn at the prior's declared camera position.

A hand-built module (the spring with `observe px = cx + scale * x`, scale a learnable parameter) stands
for a prior with camera roles; the .anm variants in priors/ are checked against the renderer in
tests/test_camera_priors.py.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from anmc.cli import main
from anmc.codegen.compile import compile_prior
from anmc.data.io import VideoError, load_clips, resize_transform, videos_transform
from anmc.errors import UserError
from anmc.synthetic.render import geometry, object_position_px, render_frames
from anmc.synthetic.synth import synthesize
from anmc.vae.config import TrainConfig
from anmc.vae.nets import VideoVAE, build_vae, chosen_decoder
from anmc.synthetic.roles import CAMERA_ROLES
from anmc.vae.sprite import GAIN, SPRITE_ROLES, SpriteDecoder
from anmc.vae.run import load_checkpoint, load_run
from anmc.vae.train import train

SPRING = "priors/spring.anm"


def spring_camera(size: int):
    """The compiled spring with a camera: px = size/2 + scale x (the renderer's 0.15 size pixels per metre), learnable scale."""
    base = compile_prior(SPRING)
    cx, scale0 = size / 2.0, 0.15 * size

    class SpringCamera(base.module_class):
        observation_names = ("px",)

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(scale0))

        def observe(self, z):
            return cx + self.scale.to(z) * z[..., :1]

        def observe_and_jacobian(self, z):
            h = self.observe(z)
            row = torch.stack([self.scale.to(z), torch.zeros((), dtype=z.dtype, device=z.device)])
            return h, row.expand(*z.shape[:-1], 1, 2)

    return dataclasses.replace(base, module_class=SpringCamera)


def sharp_disc(decoder: SpriteDecoder, radius: float = 0.5, at: tuple[float, float] = (0.0, 0.0)) -> None:
    """A fixed sprite: a white disc of `radius` centred `at` (sprite coordinates) on a black background."""
    p = decoder.alpha.shape[-1]
    c = torch.linspace(-1 + 1 / p, 1 - 1 / p, p)
    inside = ((c[None, :] - at[0]) ** 2 + (c[:, None] - at[1]) ** 2).sqrt() < radius
    with torch.no_grad():
        decoder.alpha.copy_(torch.where(inside, 30.0, -30.0)[None] / GAIN)
        decoder.colour.fill_(30.0 / GAIN)
        decoder.background.fill_(-30.0 / GAIN)


def centroid(img: torch.Tensor) -> tuple[float, float]:
    """Intensity centroid (x, y) of an (S, S) image in continuous pixels (pixel [i, j] has its centre at (j + 0.5, i + 0.5))."""
    c = torch.arange(img.shape[-1], dtype=torch.float64) + 0.5
    img = img.detach().double()
    m = img.sum()
    return float(img.sum(0) @ c / m), float(img.sum(1) @ c / m)


@settings(max_examples=40, deadline=None)
@given(px=st.floats(17.0, 47.0), py=st.floats(17.0, 47.0), at=st.tuples(st.floats(-0.3, 0.3), st.floats(-0.3, 0.3)))
def test_sprite_is_drawn_at_the_declared_pixel_position(px, py, at):
    """Wherever the sprite's content sits in its patch (`at`), its centre is drawn at (px, py)."""
    dec = SpriteDecoder(("px", "py"), 1, 64)
    sharp_disc(dec, radius=0.3, at=at)
    img = torch.sigmoid(dec(torch.tensor([[px, py]])))[0, 0]
    cx, cy = centroid(img)
    assert abs(cx - px) < 0.5 and abs(cy - py) < 0.5


@settings(max_examples=30, deadline=None)
@given(px=st.floats(12.0, 20.0), radius=st.floats(3.0, 6.0), brightness=st.floats(0.2, 1.0))
def test_size_scales_the_sprite_and_brightness_its_intensity(px, radius, brightness):
    """With `size` declared the sprite spans 2 radii each way, so a disc of radius 0.5 draws a disc of `size` pixels."""
    dec = SpriteDecoder(("brightness", "size", "px"), 1, 32)
    sharp_disc(dec)
    img = torch.sigmoid(dec(torch.tensor([[brightness, radius, px]])))[0, 0]
    cx, cy = centroid(img)
    assert abs(cx - px) < 0.5 and abs(cy - 16.0) < 0.5  # py undeclared: the learned centre, initially the frame's
    assert float(img.max().detach()) == pytest.approx(brightness, abs=1e-3)
    area = float(img.sum().detach()) / brightness
    assert area == pytest.approx(np.pi * radius**2, rel=0.2)


@settings(max_examples=30, deadline=None)
@given(radius=st.floats(6.0, 14.0), content=st.floats(0.25, 0.85))
def test_a_declared_size_is_drawn_whatever_scale_the_sprite_learns(radius, content):
    """A sprite whose disc fills a quarter or most of its patch draws the same disc: radius `size`
    pixels (the size cannot trade with the sprite's own scale). Drawn in a 96 px frame at radii of 6-14 px:
    a disc of 3 px sampled at pixel centres varies by itself by up to ~10% in area with where its edge
    falls (measured over a grid: 17% between two contents at 3-3.5 px in a 48 px frame, 3.3% here)."""
    areas = []
    for r in (content, 0.5):
        dec = SpriteDecoder(("size",), 1, 96)
        sharp_disc(dec, radius=r)
        areas.append(float(torch.sigmoid(dec(torch.tensor([[radius]])))[0, 0].detach().sum()))
        assert float(dec.body_radius()) == pytest.approx(r / 2**0.5, rel=0.08)
    assert areas[0] == pytest.approx(areas[1], rel=0.1)  # without the scaling: (content / 0.5)^2 times
    assert areas[0] == pytest.approx(np.pi * radius**2, rel=0.2)


def test_sprite_reads_every_camera_role():
    assert SPRITE_ROLES == tuple(CAMERA_ROLES)


@settings(max_examples=30, deadline=None)
@given(px=st.floats(20.0, 44.0), py=st.floats(20.0, 44.0))
def test_camera_maps_the_stored_videos_pixels_to_the_training_frames(px, py):
    """Roles are pixels of the video as stored: a 64x64 video trained at 32x32 draws (px, py) at (px, py) / 2,
    and a 48x64 (h x w) one, centre-cropped to 48x48 then resized to 32, at ((px - 8) 2/3, py 2/3)."""
    dec = SpriteDecoder(("px", "py"), 1, 32, camera=resize_transform((64, 64), 32))
    sharp_disc(dec, radius=0.3)
    cx, cy = centroid(torch.sigmoid(dec(torch.tensor([[px, py]])))[0, 0])
    assert abs(cx - px / 2) < 0.4 and abs(cy - py / 2) < 0.4
    dec = SpriteDecoder(("px", "py", "size"), 1, 32, camera=resize_transform((48, 64), 32))
    sharp_disc(dec)
    img = torch.sigmoid(dec(torch.tensor([[px, py * 0.75, 6.0]])))[0, 0]
    cx, cy = centroid(img)
    assert abs(cx - (px - 8) * 2 / 3) < 0.4 and abs(cy - py * 0.5) < 0.4
    assert float(img.sum()) == pytest.approx(np.pi * 4.0**2, rel=0.2)  # radius 6 px stored, 4 px trained


def test_resize_transform_matches_what_load_clips_does(tmp_path):
    """A disc drawn at a known place in a stored 40x60 video lands, after `--size 24`, where the transform says."""
    yy, xx = np.mgrid[0:40, 0:60] + 0.5
    frames = (((xx - 37.0) ** 2 + (yy - 21.0) ** 2 < 16.0) * 255).astype(np.uint8)[None].repeat(3, 0)
    np.save(tmp_path / "clip.npy", frames)
    got = load_clips(tmp_path / "clip.npy", size=24)[0].frames[0].astype(np.float64)
    t = videos_transform(tmp_path / "clip.npy", 24)
    assert t == {"scale": 0.6, "left": 10.0, "top": 0.0, "height": 40.0, "width": 60.0}
    c = np.arange(24) + 0.5
    assert got.sum(0) @ c / got.sum() == pytest.approx((37.0 - t["left"]) * t["scale"], abs=0.05)
    assert got.sum(1) @ c / got.sum() == pytest.approx((21.0 - t["top"]) * t["scale"], abs=0.05)
    assert resize_transform((40, 60), None)["scale"] == 1.0


def test_videos_stored_at_different_sizes_are_a_video_error(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 32, 32), np.uint8))
    np.save(tmp_path / "b.npy", np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(VideoError, match="stored at 32x32 and .* at 64x64"):
        videos_transform(tmp_path, 16)


@settings(max_examples=30, deadline=None)
@given(level=st.floats(0.05, 0.95), start=st.floats(0.05, 0.95))
def test_level_fills_the_frame_from_the_bottom_and_pulls_toward_the_drawn_level(level, start):
    """`level` alone: rows below height (1 - level) take the fill, the rest the background (the declared
    renderer's fill, at any training size); the loss's gradient moves a wrong level toward the drawn one."""
    dec = SpriteDecoder(("level",), 1, 16, camera=resize_transform((32, 32), 16))
    assert not dec.objects and not hasattr(dec, "alpha")
    with torch.no_grad():
        dec.fill.fill_(30.0 / GAIN)
        dec.background.fill_(-30.0 / GAIN)
    img = torch.sigmoid(dec(torch.tensor([[level]])))[0, 0]
    assert float(img.sum(1).sum()) / 16 == pytest.approx(16 * level, abs=1e-3)  # the filled rows, to a fraction of a row
    assert (level < 1 / 16 or float(img[-1].min()) > 0.99) and (level > 15 / 16 or float(img[0].max()) < 0.01)
    target = img.detach()[None, None]
    y = torch.tensor([[start]], requires_grad=True)
    torch.nn.functional.binary_cross_entropy_with_logits(dec(y), target, reduction="sum").backward()
    line = 16 * (1 - start)
    if abs(start - level) > 1 / 16 and abs(line - round(line)) > 1e-3:  # the line in another row, not on a row's edge (a kink)
        assert float(y.grad[0, 0]) * (start - level) > 0


def test_brightness_alone_draws_a_centred_object_of_that_brightness():
    """An LED: no px, py or size: a sprite at the learned centre (the frame's), big enough for a disc of 0.3 S."""
    dec = SpriteDecoder(("brightness",), 1, 32)
    sharp_disc(dec, radius=0.6)  # 0.6 of the half-extent 0.5 S: a disc of radius 0.3 S
    img = torch.sigmoid(dec(torch.tensor([[0.7]])))[0, 0]
    cx, cy = centroid(img)
    assert abs(cx - 16) < 0.3 and abs(cy - 16) < 0.3
    assert float(img.max()) == pytest.approx(0.7, abs=1e-3)
    assert float(img.sum()) / 0.7 == pytest.approx(np.pi * (0.3 * 32) ** 2, rel=0.1)
    with torch.no_grad():  # a dim sprite with one hot pixel still draws its body at the brightness: no scale to absorb
        dec.colour.fill_(0.0)  # colour 0.5 ...
        dec.colour[0, 16, 16] = 30.0 / GAIN  # ... and 1 at its centre pixel
    img = torch.sigmoid(dec(torch.tensor([[0.7]])))[0, 0]
    body = img[img > 0.35]
    assert float(body.median()) == pytest.approx(0.7, abs=0.01)


def bar(decoder: SpriteDecoder, key: str = "") -> None:
    """A fixed, asymmetric sprite for object `key`: a white bar from the patch's centre to its bottom edge
    (the sprite's down axis), 0.2 wide, on a black background."""
    name = (lambda what: f"{what}_{key}" if key else what)  # noqa: E731
    alpha = getattr(decoder, name("alpha"))
    p = alpha.shape[-1]
    c = torch.linspace(-1 + 1 / p, 1 - 1 / p, p)
    inside = (c[None, :].abs() < 0.1) & (c[:, None] > 0.0)
    with torch.no_grad():
        alpha.copy_(torch.where(inside, 30.0, -30.0)[None] / GAIN)
        getattr(decoder, name("colour")).fill_(30.0 / GAIN)
        decoder.background.fill_(-30.0 / GAIN)


@settings(max_examples=40, deadline=None)
@given(angle=st.floats(-3.1, 3.1), px=st.floats(26.0, 38.0), py=st.floats(26.0, 38.0))
def test_angle_turns_the_sprite_as_a_pendulum_hangs(angle, px, py):
    """With `angle` declared the sprite's down axis is drawn along (sin a, cos a): a bar from the centre to
    the bottom edge of a 16 px half-extent has its centroid 8 px from (px, py) that way, and is not
    symmetrised (a rod drawn from its pivot)."""
    dec = SpriteDecoder(("px", "py", "angle"), 1, 64)
    bar(dec)
    img = torch.sigmoid(dec(torch.tensor([[px, py, angle]])))[0, 0]
    cx, cy = centroid(img)
    assert cx == pytest.approx(px + 8.0 * np.sin(angle), abs=0.6)
    assert cy == pytest.approx(py + 8.0 * np.cos(angle), abs=0.6)


def test_several_objects_each_drawn_at_its_own_place_in_declared_order():
    """px1, py1, angle1 and px2, py2 are two objects, each with its own sprite (alpha_1, ..., alpha_2, ...);
    the second declared is drawn over the first; the unsuffixed names of a one-object decoder are unchanged."""
    obs = ("theta", "px1", "py1", "angle1", "px2", "py2")
    dec = SpriteDecoder(obs, 3, 64)
    names = {name for name, _ in dec.named_parameters()}
    assert names == {"background", "alpha_1", "colour_1", "alpha_2", "colour_2"}
    assert {name for name, _ in SpriteDecoder(("px", "py"), 1, 32).named_parameters()} == {"background", "alpha", "colour"}
    bar(dec, "1")
    sharp_disc_of(dec, "2", radius=0.25)
    with torch.no_grad():
        dec.colour_1.fill_(-30.0 / GAIN)  # object 1 red, object 2 green
        dec.colour_1[0].fill_(30.0 / GAIN)
        dec.colour_2.fill_(-30.0 / GAIN)
        dec.colour_2[1].fill_(30.0 / GAIN)
    img = torch.sigmoid(dec(torch.tensor([[0.3, 20.0, 24.0, np.pi / 2, 44.0, 40.0]])))[0]
    cx, cy = centroid(img[0])  # the bar turned to point right: from (20, 24) to (36, 24)
    assert cx == pytest.approx(28.0, abs=0.6) and cy == pytest.approx(24.0, abs=0.6)
    cx, cy = centroid(img[1])
    assert cx == pytest.approx(44.0, abs=0.5) and cy == pytest.approx(40.0, abs=0.5)
    # overlapping: object 2 (declared last) is in front
    img = torch.sigmoid(dec(torch.tensor([[0.3, 32.0, 32.0, 0.0, 32.0, 36.0]])))[0]
    assert float(img[1, 36, 32]) > 0.99 and float(img[0, 36, 32]) < 0.01


def sharp_disc_of(decoder: SpriteDecoder, key: str, radius: float) -> None:
    p = getattr(decoder, f"alpha_{key}").shape[-1]
    c = torch.linspace(-1 + 1 / p, 1 - 1 / p, p)
    inside = (c[None, :] ** 2 + c[:, None] ** 2).sqrt() < radius
    with torch.no_grad():
        getattr(decoder, f"alpha_{key}").copy_(torch.where(inside, 30.0, -30.0)[None] / GAIN)
        getattr(decoder, f"colour_{key}").fill_(30.0 / GAIN)


def test_an_angle_without_a_place_is_a_user_error():
    with pytest.raises(UserError, match=r"angle2 turns an object that the prior does not place"):
        SpriteDecoder(("px1", "py1", "angle1", "angle2"), 1, 32)
    with pytest.raises(UserError, match=r"angle_tip turns"):
        SpriteDecoder(("px", "angle_tip"), 1, 32)


def test_gradient_reaches_the_angle_and_pulls_the_sprite_toward_the_drawn_turn():
    """A bar drawn at 0.5 rad, the sprite at 0.3 rad: the loss falls as the angle grows."""
    dec = SpriteDecoder(("px", "py", "angle"), 1, 64)
    bar(dec)
    target = torch.sigmoid(dec(torch.tensor([[32.0, 32.0, 0.5]]))).detach()
    y = torch.tensor([[32.0, 32.0, 0.3]], requires_grad=True)
    torch.nn.functional.binary_cross_entropy_with_logits(dec(y), target, reduction="sum").backward()
    assert float(y.grad[0, 2]) < -1.0


def test_undeclared_coordinate_is_a_learned_constant():
    dec = SpriteDecoder(("py",), 1, 32)
    px, py, e = dec.placement(torch.tensor([[10.0], [20.0]]))
    assert px.tolist() == [16.0, 16.0] and py.tolist() == [10.0, 20.0] and e.tolist() == [8.0, 8.0]
    assert px.requires_grad  # the centre trains


def test_gradients_reach_the_position_the_latents_and_the_priors_params():
    """d loss / d z_x = scale * d loss / d px and d loss / d scale = x * d loss / d px (chain rule through h),
    and a sprite drawn left of the object is pushed right."""
    prior = spring_camera(32)
    vae = build_vae(prior, (1, 32, 32), TrainConfig(decoder="sprite", size=32))
    sharp_disc(vae.decoder)
    target = torch.sigmoid(vae.decoder(torch.tensor([[18.0]]))).detach()  # the object at px = 18 (x = 0.4167 m)
    bce = lambda out: torch.nn.functional.binary_cross_entropy_with_logits(out, target.expand_as(out), reduction="sum")  # noqa: E731
    z = torch.tensor([[0.2, 0.0]], requires_grad=True)  # drawn at px = 16 + 4.8 * 0.2 = 16.96: left of it
    bce(vae.decode(z)).backward()
    px = torch.tensor([[16.96]], requires_grad=True)
    bce(vae.decoder(px)).backward()
    dpx = float(px.grad[0, 0])
    assert dpx < 0  # moving right lowers the loss
    assert float(z.grad[0, 0]) == pytest.approx(4.8 * dpx, rel=1e-5)
    assert float(z.grad[0, 1]) == 0.0  # the frame does not show the velocity
    assert float(vae.prior.scale.grad) == pytest.approx(0.2 * dpx, rel=1e-5)


def test_soft_initial_sprite_gives_a_gradient_toward_a_distant_object():
    """The initial Gaussian-blob alpha still overlaps an object 8 px away (half its half-extent at 64x64)."""
    dec = SpriteDecoder(("px", "py"), 1, 64)
    assert not hasattr(dec, "centre") and not hasattr(dec, "fill")  # both coordinates declared, no level: unused
    frame = render_frames("dot", np.zeros((1, 2)), 64, geometry("dot", 64))  # a disc at the frame's centre
    target = torch.as_tensor(frame, dtype=torch.float32)[None] / 255.0
    y = torch.tensor([[24.0, 32.0]], requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(dec(y), target, reduction="sum")
    loss.backward()
    assert float(y.grad[0, 0]) < -1.0  # toward x = 32
    assert abs(float(y.grad[0, 1])) < 1e-2 * abs(float(y.grad[0, 0]))  # already level with it


@pytest.mark.parametrize("channels", [1, 3])
def test_decode_shape_and_dtype(channels):
    vae = VideoVAE(spring_camera(16).module(), channels, 16, decoder="sprite", posterior="smoother")
    out = vae.decode(torch.randn(2, 5, 2))
    assert out.shape == (2, 5, channels, 16, 16) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_prior_without_camera_is_a_user_error():
    with pytest.raises(UserError, match="declares no camera role"):
        SpriteDecoder(("x",), 1, 32)
    with pytest.raises(UserError, match="--kl standard"):
        build_vae(spring_camera(16), (1, 16, 16), TrainConfig(decoder="sprite", kl="standard"))


@pytest.fixture(scope="module")
def spring_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("spring")
    synthesize(SPRING, out_dir=out, clips=3, frames=16, size=16, seed=1, fmt="npz")
    return out


def test_cli_sprite_decoder_without_camera_exits_2(spring_data, tmp_path):
    res = CliRunner().invoke(main, ["train", SPRING, str(spring_data), "-o", str(tmp_path / "run"), "--decoder", "sprite",
                                    "--size", "16", "--epochs", "1", "--steps-per-epoch", "1", "--batch", "2", "--seq-len", "4"])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert "declares no camera role" in res.output and "observe px =" in res.output


@pytest.mark.parametrize(
    "prior, chosen",
    [("priors/pendulum.anm", "deconv"), ("priors/spring.anm", "deconv"), ("priors/spring_camera.anm", "sprite"),
     ("priors/pulsar.anm", "sprite"), ("priors/led.anm", "sprite"), ("priors/torricelli.anm", "sprite"),
     ("priors/double_pendulum.anm", "deconv"), ("priors/double_pendulum_camera.anm", "sprite")],
)  # fmt: skip
def test_the_default_decoder_is_the_sprite_where_the_prior_declares_its_camera(prior, chosen):
    module = compile_prior(prior).module()
    assert TrainConfig().decoder == "auto"
    assert chosen_decoder("auto", module.observations) == chosen
    assert chosen_decoder("broadcast", module.observations) == "broadcast"  # a decoder named is the one used
    assert type(build_vae(compile_prior(prior), (1, 16, 16), TrainConfig()).decoder).__name__ == {"sprite": "SpriteDecoder", "deconv": "DeconvDecoder"}[chosen]


def test_auto_trains_what_sprite_trains_step_for_step(spring_data, tmp_path):
    """The default decoder on a prior with a camera role is `--decoder sprite`: the same weights after
    the same steps, and the run records "sprite"."""
    prior = tmp_path / "spring_camera.anm"
    prior.write_text(open("priors/spring_camera.anm").read().replace("const S = 64", "const S = 16"))
    weights = {}
    for decoder in ("auto", "sprite"):
        config = TrainConfig(decoder=decoder, size=16, batch=2, seq_len=4, steps_per_epoch=3, epochs=1, val_fraction=0.34, warmup=2)
        train(str(prior), [str(spring_data)], tmp_path / decoder, config)
        weights[decoder] = load_checkpoint(tmp_path / decoder)["vae"]
        assert json.loads((tmp_path / decoder / "config.json").read_text())["decoder"] == "sprite"
    assert weights["auto"].keys() == weights["sprite"].keys()
    assert all(torch.equal(weights["auto"][k], weights["sprite"][k]) for k in weights["auto"])


def test_a_config_from_before_auto_keeps_its_deconv_decoder():
    saved = dataclasses.asdict(TrainConfig())
    del saved["decoder"]
    assert TrainConfig.from_dict(saved).decoder == "deconv"
    with pytest.raises(UserError, match="use one of auto, deconv"):
        TrainConfig(decoder="sprites")


def test_cli_train_and_eval_with_the_sprite_decoder(tmp_path):
    """`anmc train --size 16` (the default decoder, auto) on a 32x32 video with priors/spring_camera.anm
    written for it (S = 32: pixels of the stored video) trains the sprite decoder and records it, then
    `anmc eval` rebuilds the sprite decoder, camera included, from the checkpoint."""
    data = tmp_path / "spring32"
    synthesize(SPRING, out_dir=data, clips=3, frames=16, size=32, seed=1, fmt="npz")
    prior = tmp_path / "spring_camera.anm"
    prior.write_text(open("priors/spring_camera.anm").read().replace("const S = 64", "const S = 32"))
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(prior), str(data), "-o", str(run), "--size", "16",
                                    "--epochs", "1", "--steps-per-epoch", "3", "--batch", "2", "--seq-len", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["decoder"] == "sprite"
    assert "decoder (auto): sprite -- the prior declares camera roles" in res.output
    assert load_run(run).vae.decoder.camera.tolist() == [0.5, 0.0, 0.0, 32.0, 32.0]
    res = CliRunner().invoke(main, ["eval", str(run)])
    assert res.exit_code == 0, res.output
    assert "slope" in res.output


def test_tiny_training_with_the_sprite_decoder(spring_data, tmp_path):
    """A few steps on 16x16 spring frames: the loss falls, the sprite and the prior's camera scale train."""
    config = TrainConfig(decoder="sprite", size=16, batch=2, seq_len=4, steps_per_epoch=8, epochs=2, learn_params_after=1,
                         val_fraction=0.34, warmup=4)  # fmt: skip
    result = train(spring_camera(16), [str(spring_data)], tmp_path / "run", config)
    losses = [m["loss"] for m in result.metrics]
    val = [m["val_loss"] for m in result.metrics]  # the same held-out windows each epoch (the training ones vary)
    assert all(np.isfinite(losses)) and val[-1] < val[0]
    assert (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("after", [0, 1])
def test_sprites_keep_their_blob_for_the_first_epochs(spring_data, tmp_path, after):
    """sprite_shape_after = 1: after one epoch the sprite's alpha and colour are still the initial blob
    while the background and the encoder trained; 0: they train from the first step."""
    config = TrainConfig(decoder="sprite", size=16, batch=2, seq_len=4, steps_per_epoch=4, epochs=1, learn_params_after=1,
                         val_fraction=0.34, warmup=4, sprite_shape_after=after)  # fmt: skip
    prior = spring_camera(16)
    fresh = SpriteDecoder(("px",), 1, 16)
    train(prior, [str(spring_data)], tmp_path / "run", config)
    weights = load_checkpoint(tmp_path / "run")["vae"]  # (a hand-built prior: load_run would rebuild spring.anm's)
    for name in ("alpha", "colour"):
        assert torch.equal(weights[f"decoder.{name}"], getattr(fresh, name).detach()) == (after == 1), name
    assert not torch.equal(weights["decoder.background"], fresh.background.detach())
    assert [p.name for p in dataclasses.fields(TrainConfig) if p.name == "sprite_shape_after"] and TrainConfig().sprite_shape_after == 1
    with pytest.raises(UserError, match="--sprite-shape-after -1"):
        TrainConfig(sprite_shape_after=-1)


def test_background_and_fill_start_from_the_data():
    """Without a level the background starts as the per-pixel median (a moving dot disappears from it),
    or behind a light that glows in place the median of the darkest 5% of the frames (the scene with the
    light off, not learned); with a level, the background starts as the top rows' colour and the fill as the bottom rows' (dark water
    under a light wall: the opposite of the defaults)."""
    g = torch.Generator().manual_seed(0)
    scene = torch.rand(3, 16, 16, generator=g) * 0.5 + 0.25
    frames = scene.repeat(9, 1, 1, 1)
    for i in range(9):
        frames[i, :, 2 + i, 3 + i] = 1.0  # a white dot that moves along the diagonal
    decoder = SpriteDecoder(("px", "py"), 3, 16)
    decoder.start_from(frames)
    torch.testing.assert_close(torch.sigmoid(GAIN * decoder.background.detach()), scene, atol=1e-5, rtol=0)

    wall, water = torch.tensor([0.9, 0.85, 0.8]), torch.tensor([0.05, 0.1, 0.4])
    tank = wall[None, :, None, None].repeat(6, 1, 16, 16)
    for i, line in enumerate((4, 5, 6, 7, 8, 9)):  # the water's surface, rows from the top
        tank[i, :, line:] = water[:, None, None]
    decoder = SpriteDecoder(("level",), 3, 16)
    decoder.start_from(tank)
    torch.testing.assert_close(torch.sigmoid(GAIN * decoder.background.detach()), wall[:, None, None].expand(3, 16, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.sigmoid(GAIN * decoder.fill.detach()), water[:, None, None].expand(3, 16, 16), atol=1e-5, rtol=0)
    room = torch.rand(1, 16, 16, generator=g) * 0.3 + 0.1  # an LED in the middle of a dim room, on half the time
    glow = torch.zeros(1, 16, 16)
    glow[:, 6:10, 6:10] = 0.6
    lit = room.repeat(50, 1, 1, 1) + glow * (torch.arange(50) % 2 == 0).float()[:, None, None, None]
    led = SpriteDecoder(("brightness",), 1, 16)
    led.start_from(lit)
    torch.testing.assert_close(torch.sigmoid(GAIN * led.background.detach()), room, atol=1e-5, rtol=0)  # the light off
    assert led.glowing and not led.background.requires_grad  # and it stays the scene with the light off
    moving = SpriteDecoder(("px", "brightness"), 1, 16)  # a light that moves: the median, as for any moving object
    moving.start_from(lit)
    torch.testing.assert_close(torch.sigmoid(GAIN * moving.background.detach()), lit.median(0).values, atol=1e-5, rtol=0)
    assert not moving.glowing and moving.background.requires_grad
    black = SpriteDecoder(("px",), 1, 16)
    black.start_from(torch.zeros(4, 1, 16, 16))
    assert float(torch.sigmoid(GAIN * black.background).min()) == pytest.approx(0.02)  # kept where the sigmoid has gradient


def test_spring_camera_matches_the_renderer_geometry():
    """The hand-built camera (px = S/2 + 0.15 S x) is the spring renderer's block centre, at 16 and 64 pixels."""
    for size in (16, 64):
        module = spring_camera(size).module()
        states = module.sample_initial(50, torch.Generator().manual_seed(0))
        want = object_position_px("spring", states.numpy(), geometry("spring", size), module.state_names)
        got = module.observe(states).detach().numpy()[:, 0]
        np.testing.assert_allclose(got, want[:, 0], atol=1e-4)
