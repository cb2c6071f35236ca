"""The feed-forward network: shapes, gradient flow per branch, straight-through masks,
visibility, the exported avatar, the encoder's weight loader and checkpoint errors.

Tiny configuration (synthetic head, 64 px, d = 32) so every test runs in seconds on a CPU.
"""

import dataclasses

import pytest
import torch

from avatar_core.errors import CheckpointError
from avatar_core.recon.feedforward.network import FeedForwardNet, NetworkConfig
from avatar_core.render import orbit_camera, render


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_batch(net, B=2, seed=0, expression=True):
    g = torch.Generator().manual_seed(seed)
    S = net.cfg.image_size
    cam = orbit_camera(distance=1.0, fov_deg=20, width=S, height=S)
    E, J = net.rig.num_expr, net.rig.num_joints
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    alpha = ((xx ** 2 / 0.6 + (yy - 0.2) ** 2 / 1.2) < 1).float()[None, None].expand(B, 1, S, S)
    b = dict(src_image=torch.rand(B, 3, S, S, generator=g), src_alpha=alpha.clone(),
             src_K=cam.K.expand(B, 3, 3), src_viewmat=cam.viewmat.expand(B, 4, 4),
             shape=torch.randn(B, net.rig.num_shape, generator=g) * 0.3,
             src_expression=torch.zeros(B, E), src_pose=torch.zeros(B, J, 3), src_translation=torch.zeros(B, 3),
             drv_image=torch.rand(B, 3, S, S, generator=g), drv_alpha=alpha.clone(),
             drv_K=cam.K.expand(B, 3, 3), drv_viewmat=cam.viewmat.expand(B, 4, 4),
             drv_expression=torch.rand(B, E, generator=g) * (1.0 if expression else 0.0),
             drv_pose=torch.randn(B, J, 3, generator=g) * 0.05, drv_translation=torch.zeros(B, 3))
    return b


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return FeedForwardNet(NetworkConfig.tiny(split_levels=3, split_fraction=0.06))


BRANCHES = ("encoder.", "local_head.", "global_branch.queries", "global_branch.layers", "global_branch.offset",
            "local_proj.", "levels.0.", "levels.1.", "gaussian_head.", "shoulder.", "expression.g0",
            "expression.embed", "expression.gsn", "expression.decode", "expression.mask", "refiner.")


def test_shapes_and_gradients_reach_every_branch(tiny_net):
    net = tiny_net
    net.zero_grad()
    batch = make_batch(net)
    out = net(batch, lod=2)
    B, S = 2, net.cfg.image_size
    assert out["coarse"].shape == (B, 3, S, S) and out["refined"].shape == (B, 3, S, S)
    pred = out["pred"]
    assert pred["head"][2]["features"].shape == (B, net.rig.counts[2], net.cfg.channels)
    assert pred["head"][2]["rotation"].shape == (B, net.rig.counts[2], 4)
    assert pred["vertex_offset"].shape == (B, net.rig.num_vertices, 3)
    n0 = net.expression.split_vertices.numel()
    Ns = n0 * (1 + 2 + 4 + 8)  # k = 2, L = 3
    assert pred["split"]["attrs"]["offset"].shape == (B, Ns, 3)
    assert pred["split"]["gate"].shape == (B, Ns)
    P = net.cfg.shoulder_size
    assert pred["shoulder"]["offset"].shape == (B, P * P, 3) and pred["shoulder"]["mask"].shape == (B, P * P)
    assert out["means"].shape == (B, net.rig.counts[2] + Ns + P * P, 3)
    assert torch.isfinite(out["refined"]).all()
    loss = (out["coarse"] - batch["drv_image"]).abs().mean() + (out["refined"] - batch["drv_image"]).abs().mean()
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    for prefix in BRANCHES:
        sel = [g for n, g in grads.items() if n.startswith(prefix)]
        assert sel, prefix
        assert any(g is not None and float(g.abs().sum()) > 0 for g in sel), f"no gradient reaches {prefix}"
    dead = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()]
    assert not dead, dead


def test_coarser_lods_train_only_their_levels(tiny_net):
    net = tiny_net
    net.zero_grad()
    out = net(make_batch(net, B=1), lod=0)
    out["coarse"].mean().backward()
    assert all(p.grad is None for n, p in net.named_parameters() if n.startswith("levels."))
    assert out["pred"]["head"][0]["offset"].shape[1] == net.rig.counts[0]


def test_straight_through_masks_follow_splitavatar_eq_13():
    from avatar_core.recon.feedforward.split import ste_masks
    g = torch.Generator().manual_seed(1)
    k = 2
    m1 = torch.rand(3, 6, generator=g).requires_grad_(True)   # n_0 = 3 parents, k = 2
    m2 = torch.rand(3, 12, generator=g).requires_grad_(True)
    M0, M1, M2 = ste_masks([m1, m2], k)
    q = lambda x: (x > 0.5).float()  # noqa: E731 - Eq. 11
    # forward: M_{i+1} = q(m_{i+1}) AND q(M_i) (Eq. 12), M_0 = 1
    assert torch.equal(M0, torch.ones(3, 3))
    assert torch.equal(M1, q(m1))
    assert torch.equal(M2, q(m2) * q(M1).repeat_interleave(k, 1))
    # backward (Eq. 13): dM_{i+1}/dm_{i+1} = M_i, dM_{i+1}/dM_i = m_{i+1}
    g1, g2 = torch.randn(3, 6, generator=g), torch.randn(3, 12, generator=g)
    (M1 * g1).sum().backward(retain_graph=True)
    (M2 * g2).sum().backward()
    want_m2 = g2 * q(m1).repeat_interleave(k, 1)
    want_m1 = g1 + (g2 * m2.detach()).reshape(3, 6, k).sum(-1)
    torch.testing.assert_close(m2.grad, want_m2)
    torch.testing.assert_close(m1.grad, want_m1)


def test_exported_avatar_renders_like_the_training_avatar(tiny_net, tmp_path):
    """The file's avatar (masked Gaussians dropped, soft masks applied by ``select``) renders the
    same image as the gated training avatar at every LOD."""
    from avatar_core.io.avatar_file import load_avatar, save_avatar
    net = tiny_net
    batch = make_batch(net, B=1, seed=3)
    with torch.no_grad():
        pred = net.predict(batch, 2, all_lods=True)
        # close some split masks so the test sees delayed filtering in action
        logit = pred["split"]["mask_logit"]
        n0 = net.expression.split_vertices.numel()
        logit[:, n0::3] = -3.0
        from avatar_core.recon.feedforward.split import ste_masks
        soft, layers, start = [], [], n0
        for i in range(1, net.cfg.split_levels + 1):
            n = n0 * 2 ** i
            soft.append(torch.sigmoid(logit[:, start:start + n]))
            start += n
        pred["split"]["gate"] = torch.cat(ste_masks(soft, 2), 1)
        av = net.to_avatar(pred, 0)
    assert av.available_lods() == [0, 1, 2]
    assert av.lod_counts()[2] > av.lod_counts()[1] > av.lod_counts()[0]
    n_sh = int(pred["shoulder"]["mask"][0].sum())
    assert int((av.region == 2).sum()) == n_sh
    # hard masks of the file == forward values of the straight-through gates
    split = av.split_layer >= 0
    torch.testing.assert_close(av.effective_mask(hard=True)[split], pred["split"]["gate"][0])
    path = save_avatar(av, tmp_path / "ff.avatar")
    av2 = load_avatar(path)
    S = net.cfg.image_size
    cam = orbit_camera(distance=1.0, fov_deg=20, width=S, height=S)
    for lod in (0, 1, 2):
        with torch.no_grad():
            p = dict(pred, lod=lod, head={lod: pred["head"][lod]})
            tav = net.training_avatars(p)[0]
            fr = tav.animate(batch["drv_expression"], batch["drv_pose"], lod=lod,
                             index=torch.arange(tav.num_gaussians))
            fr.opacities = fr.opacities * net.gate(p)
            ref = render(fr, cam, background=1.0, with_depth=False).image
            fr2 = av2.animate(batch["drv_expression"], batch["drv_pose"], lod=lod)
            img = render(fr2, cam, background=1.0, with_depth=False).image
        torch.testing.assert_close(img, ref, atol=2e-4, rtol=0)
    from avatar_core.render.refiner import refiner_from_state
    ref = refiner_from_state(av2.refiner_state, av2.refiner_config)
    assert ref.config.in_channels == net.cfg.channels


def test_visibility_sees_the_front_not_the_back(tiny_net):
    net = tiny_net
    batch = make_batch(net, B=1)
    with torch.no_grad():
        pred = net.predict(batch, 1)
    vis = pred["visibility"]
    v0 = pred["verts0"][0]
    front = v0[:, 2] > 0.05
    back = v0[:, 2] < -0.05
    assert vis[0][0][front].mean() > 0.95
    assert vis[0][0][back].mean() < 0.05
    assert vis[1].shape == (1, net.rig.counts[1])


def test_encoder_loads_dinov2_key_names(tmp_path):
    from avatar_core.recon.feedforward.encoder import EncoderConfig, ViTEncoder, build_encoder, load_vit_weights
    cfg = EncoderConfig.tiny(registers=4)
    src = ViTEncoder(cfg)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    sd = {"backbone." + k: v for k, v in src.state_dict().items()}
    torch.save({"teacher": sd}, tmp_path / "vit.pth")
    enc = build_encoder(dataclasses.replace(cfg, weights=str(tmp_path / "vit.pth")))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x).tokens, src(x).tokens)
    assert enc(x).tokens.shape == (2, 1 + 4 + 64, 32) and enc(x).patches.shape == (2, 32, 8, 8)
    assert not any(p.requires_grad for p in build_encoder(dataclasses.replace(cfg, trainable=False)).parameters())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vit_weights(ViTEncoder(cfg), tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="do not fit|position embeddings"):
        load_vit_weights(ViTEncoder(EncoderConfig.tiny(dim=48, heads=2)), tmp_path / "vit.pth")
    # ViT-B/14 sizes: 518 px -> 37 x 37 = 1369 patch tokens (no weights needed to check shapes)
    vb = EncoderConfig.vitb14()
    assert vb.grid == 37 and vb.dim == 768 and vb.depth == 12


def test_checkpoint_round_trip_and_clear_errors(tiny_net, tmp_path):
    from safetensors.torch import save_file
    from avatar_core.recon.feedforward import reconstruct_from_batch, load_feedforward
    from avatar_core.recon.feedforward.model_file import load_network, save_model
    path = save_model(tiny_net, tmp_path / "model.safetensors", step=7)
    net2 = load_network(path)
    for (n, a), (_, b) in zip(tiny_net.state_dict().items(), net2.state_dict().items()):
        assert torch.equal(a, b), n
    net3 = load_feedforward(tmp_path, device="cpu")  # a folder holding model.safetensors
    av = reconstruct_from_batch(net3, make_batch(net3, B=1), info={"method": "feedforward"})
    assert av.available_lods() == [0, 1, 2] and av.info["method"] == "feedforward"
    assert set(av.source) >= {"K", "viewmat", "width", "height", "expression", "pose", "shape"}
    with pytest.raises(CheckpointError, match="does not exist"):
        load_network(tmp_path / "missing.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a HeadSplat"):
        load_network(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="readable"):
        load_network(tmp_path / "junk.safetensors")
    from avatar_core.head.synthetic import make_test_head
    with pytest.raises(CheckpointError, match="head model"):
        load_network(path, head=make_test_head(subdivisions=2))
    with pytest.raises(CheckpointError, match="configuration"):
        load_network(path, config=NetworkConfig.tiny(dim=64))
