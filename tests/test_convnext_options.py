"""The `convnext` encoder's options: `shared: false` (one branch per view) and pooling heads
(`avg`, today's output; `gem`; `netvlad`) over any timm backbone, ViTs included, at the sizes of
both views."""

from __future__ import annotations

import pytest
import timm
import torch

from geokit.errors import GeokitError
from geokit.registry import create

SIZES = {"query": (32, 128), "reference": (64, 64)}


def _encoder(seed: int = 0, **options):
    torch.manual_seed(seed)
    return create("encoder", "convnext", {"model": "convnext_atto", "pretrained": False, **options})


def _images(view: str, n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *SIZES[view], generator=torch.Generator().manual_seed(seed + len(view)))


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


# ------------------------------------------------------------------------------ shared: false


def test_two_branches_start_equal_and_train_apart():
    from geokit_plugins.losses.infonce import InfoNCE

    enc = _encoder(shared=False)
    keys = list(enc.state_dict())
    assert keys and all(k.startswith(("query.model.", "reference.model.")) for k in keys)
    q0, r0 = _params(enc.query), _params(enc.reference)
    assert q0.keys() == r0.keys() and all(torch.equal(q0[k], r0[k]) for k in q0)  # same initial weights

    loss_fn = InfoNCE()
    opt = torch.optim.AdamW(list(enc.parameters()) + list(loss_fn.parameters()), lr=1e-3)
    enc.train()
    loss = loss_fn(enc(_images("query"), view="query"), enc(_images("reference"), view="reference"))
    loss.backward()
    assert all(p.grad is not None for p in enc.parameters()), "a branch received no gradient"
    opt.step()
    q1, r1 = _params(enc.query), _params(enc.reference)
    assert all(not torch.equal(q1[k], q0[k]) for k in q1 if k.endswith("stem.0.weight"))
    differ = [k for k in q1 if not torch.equal(q1[k], r1[k])]
    assert len(differ) > len(q1) // 2, f"branches still share most parameters: {len(differ)}/{len(q1)}"


def test_each_view_goes_through_its_own_branch():
    enc = _encoder(shared=False).eval()
    xq, xr = _images("query"), _images("reference")
    with torch.no_grad():
        q0, r0 = enc(xq, view="query"), enc(xr, view="reference")
        for p in enc.query.parameters():
            p.add_(0.05 * torch.randn_like(p))
        q1, r1 = enc(xq, view="query"), enc(xr, view="reference")
        assert not torch.allclose(q0, q1) and torch.equal(r0, r1)
        for p in enc.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
        q2, r2 = enc(xq, view="query"), enc(xr, view="reference")
        assert torch.equal(q1, q2) and not torch.allclose(r1, r2)


def test_a_two_branch_encoder_needs_the_view():
    enc = _encoder(shared=False)
    with pytest.raises(GeokitError, match="shared: false.*view='query' or 'reference'"):
        enc(_images("query"))
    with pytest.raises(GeokitError, match="got view='aerial'"):
        enc(_images("query"), view="aerial")
    # a shared encoder accepts the view and ignores it
    shared = _encoder().eval()
    with torch.no_grad():
        x = _images("reference")
        assert torch.equal(shared(x), shared(x, view="query"))


def test_shared_checkpoint_keys_are_unchanged_and_old_checkpoints_load(tmp_path, pairs_root):
    from geokit import config as config_mod
    from geokit.checkpoint import save_weights
    from geokit.model import build
    from geokit.testing import tiny_config

    enc = _encoder()
    own = timm.create_model("convnext_atto", pretrained=False, num_classes=0).state_dict()
    assert list(enc.state_dict()) == [f"model.{k}" for k in own]
    assert {"model.stem.0.weight", "model.head.norm.weight", "model.stages.3.blocks.1.mlp.fc2.bias"} <= set(
        enc.state_dict()
    )
    # a checkpoint in the layout geokit wrote before these options existed
    old = {f"encoder.model.{k}": v + 0.25 for k, v in own.items()}
    old["loss.logit_scale"] = torch.tensor(2.5)
    path = tmp_path / "old.safetensors"
    save_weights(path, old, {"format": 1, "encoder": {"name": "convnext", "model": "convnext_atto"}})
    parts = build(config_mod.resolve(tiny_config(pairs_root)), for_checkpoint=True)
    parts.load(path)
    assert all(torch.equal(v, old[f"encoder.{k}"]) for k, v in parts.encoder.state_dict().items())


def test_two_branches_start_from_the_initial_weights_file(tmp_path):
    state = timm.create_model("convnext_atto", pretrained=False, num_classes=0).state_dict()
    saved = {f"model.{k}": v + 0.5 for k, v in state.items()}
    saved["logit_scale"] = torch.tensor(3.0)
    torch.save(saved, tmp_path / "released.pth")
    enc = _encoder(shared=False, weights=str(tmp_path / "released.pth"))
    for view in ("query", "reference"):
        got = getattr(enc, view).model.state_dict()
        assert all(torch.equal(got[k], saved[f"model.{k}"]) for k in state), view
    assert enc.loss_state["logit_scale"].item() == 3.0
    # a geokit two-branch encoder's own state loads back into both branches as they were
    for p in enc.reference.parameters():
        p.data.add_(1.0)
    torch.save({f"encoder.{k}": v for k, v in enc.state_dict().items()}, tmp_path / "two.pth")
    again = _encoder(seed=5, shared=False, weights=str(tmp_path / "two.pth"))
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in again.state_dict().items())


# ------------------------------------------------------------------------------ pooling heads


@pytest.mark.parametrize(
    "options, dim",
    [
        ({"pool": "avg"}, 320),
        ({"pool": "gem"}, 320),
        ({"pool": "netvlad"}, 16 * 64),
        ({"pool": "netvlad", "clusters": 4, "cluster_dim": 8}, 32),
        ({"pool": "netvlad", "pool_dim": 48}, 48),
    ],
)
def test_pooling_heads_give_embedding_dim_at_both_view_sizes(options, dim):
    enc = _encoder(**options)
    assert enc.embedding_dim == dim
    for view in SIZES:
        y = enc(_images(view, n=2), view=view)
        assert tuple(y.shape) == (2, dim) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_avg_is_timms_pooled_output():
    enc = _encoder().eval()
    ref = timm.create_model("convnext_atto", pretrained=False, num_classes=0).eval()
    ref.load_state_dict(enc.model.state_dict())
    x = _images("query")
    with torch.no_grad():
        assert torch.equal(enc(x), ref(x))


def test_gem_by_hand():
    from geokit_plugins.encoders._timm_heads import GeM, local_features

    tokens = torch.tensor([[[1.0, -1.0], [2.0, 4.0]]])  # (B=1, L=2, C=2)
    out = GeM()(tokens)
    assert out[0, 0].item() == pytest.approx(((1 + 8) / 2) ** (1 / 3), rel=1e-6)
    assert out[0, 1].item() == pytest.approx(((1e-18 + 64) / 2) ** (1 / 3), rel=1e-6)  # clamped at eps
    # a CNN map (B, C, H, W) becomes H·W descriptors of C values
    fmap = torch.arange(12.0).reshape(1, 3, 2, 2)
    assert local_features(torch.nn.Identity(), fmap).tolist() == [[[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]]
    enc = _encoder(pool="gem")
    assert enc.pool.p.item() == 3.0 and enc.pool.p.requires_grad


def test_netvlad_output_is_unit_length_without_projection():
    enc = _encoder(pool="netvlad", clusters=3, cluster_dim=5).eval()
    with torch.no_grad():
        y = enc(_images("reference"))
    assert tuple(y.shape) == (4, 15)
    assert torch.allclose(y.norm(dim=1), torch.ones(4), atol=1e-5)


def test_head_options_without_netvlad_are_refused():
    with pytest.raises(GeokitError, match="clusters only apply to pool: netvlad"):
        _encoder(pool="gem", clusters=8)


@pytest.mark.parametrize("pool", ["avg", "gem"])
def test_vit_tiny_at_two_sizes(pool):
    torch.manual_seed(0)
    enc = create("encoder", "convnext", {"model": "vit_tiny_patch16_224", "pretrained": False, "pool": pool})
    assert enc.embedding_dim == 192
    for size in ((32, 32), (64, 64), (32, 96)):
        y = enc(torch.randn(2, 3, *size))
        assert tuple(y.shape) == (2, 192) and torch.isfinite(y).all()
    if pool == "avg":  # at the model's own size, exactly timm's output (dynamic_img_size changes nothing)
        ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
        ref.load_state_dict(enc.model.state_dict())
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            assert torch.equal(enc.eval()(x), ref(x))


def test_a_fixed_size_model_names_the_sizes():
    torch.manual_seed(0)
    enc = create("encoder", "convnext", {"model": "cait_xxs24_224", "pretrained": False})  # no dynamic_img_size
    with pytest.raises(GeokitError, match="cannot embed images of 64x96 px.*dataset.query_size"):
        enc(torch.randn(1, 3, 64, 96))


# ------------------------------------------------------------------------------ through the engines


@pytest.fixture(scope="module")
def two_branch_run(tmp_path_factory, pairs_root):
    """One short `shared: false` training run shared by the engine tests below."""
    import yaml

    from geokit import config as config_mod
    from geokit.engine import train
    from geokit.testing import tiny_config

    tmp = tmp_path_factory.mktemp("two_branch")
    cfg = tiny_config(pairs_root, encoder={"shared": False}, train={"epochs": 1})
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    train(config_mod.resolve(cfg), tmp / "run")
    return tmp / "run.yaml", tmp / "run" / "model.safetensors"


@pytest.mark.slow
def test_two_branches_are_trained_recorded_and_routed_by_evaluate_and_index(tmp_path, two_branch_run):
    import numpy as np
    from safetensors.torch import load_file

    from geokit import config as config_mod
    from geokit.checkpoint import read_record, save_weights
    from geokit.engine.evaluation import evaluate
    from geokit.index import IndexSpec, build_from_checkpoint, dataset_references

    cfg_path, ckpt = two_branch_run
    record = read_record(ckpt)
    assert record["encoder"]["shared"] is False
    tensors = load_file(ckpt)
    q_keys = [k for k in tensors if k.startswith("encoder.query.")]
    assert q_keys and all(k.replace(".query.", ".reference.", 1) in tensors for k in q_keys)
    assert any(not torch.equal(tensors[k], tensors[k.replace(".query.", ".reference.", 1)]) for k in q_keys)

    cfg = config_mod.load(cfg_path)
    res = evaluate(cfg, ckpt)
    g = torch.Generator().manual_seed(0)
    moved = {
        k: v + 0.05 * torch.randn(v.shape, generator=g)
        if k.startswith("encoder.reference.") and v.is_floating_point()
        else v
        for k, v in tensors.items()
    }
    save_weights(tmp_path / "moved.safetensors", moved, record)
    res2 = evaluate(cfg, tmp_path / "moved.safetensors")
    np.testing.assert_array_equal(res.query, res2.query)  # queries never touch the reference branch
    assert not np.allclose(res.reference, res2.reference, atol=1e-3)

    # `index build` embeds tiles with the reference branch: its vectors are evaluate's references
    ix = build_from_checkpoint(ckpt, dataset_references(cfg_path), tmp_path / "tiles.index", IndexSpec(), show=False)
    np.testing.assert_allclose(ix.vectors, res.reference, atol=1e-5)
    # `locate` embeds photos with the branch of the view it is given
    from geokit.retrieval.locate import Localizer

    es = res.eval_set
    for view, paths, expected in (
        ("query", es.query_paths[:5], res.query[:5]),
        ("reference", es.reference_paths[:5], res.reference[:5]),
    ):
        loc = Localizer(tmp_path / "tiles.index", ckpt, view=view, device="cpu")
        np.testing.assert_allclose(loc.embed(paths), expected, atol=1e-5, err_msg=view)


@pytest.mark.parametrize(
    "options",
    [
        {"model": "convnext_atto", "shared": False},
        {"model": "convnext_atto", "shared": False, "pool": "netvlad", "clusters": 4, "cluster_dim": 8},
        {"model": "vit_tiny_patch16_224", "pool": "gem"},
    ],
    ids=["two-branch", "two-branch-netvlad", "vit-gem"],
)
def test_variants_pass_the_conformance_kit(options):
    from geokit.testing import check_encoder

    check_encoder("convnext", {"pretrained": False, **options})
