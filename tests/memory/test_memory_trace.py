"""The live-byte counter: storages counted once, freed when they die, peaks by phase."""

import torch

from tunelab.memory.trace import LiveBytes, new_fake_mode, resident_tensors, storage_bytes


def test_views_share_their_storage_and_frees_are_seen():
    counter = LiveBytes()
    with counter:
        a = torch.empty(1000, dtype=torch.float32)          # 4000 bytes
        v = a.view(10, 100).t()                               # a view: no new storage
        assert counter.current == 4000
        b = a * 2                                             # a new storage
        assert counter.current == 8000
        del b
        assert counter.current == 4000                        # freed as soon as the last reference goes
        del a, v
    assert counter.current == 0
    assert counter.peak == 8000


def test_peaks_are_kept_per_phase_with_what_was_live():
    counter = LiveBytes()
    w = torch.ones(256)
    counter.register([w])
    with counter:
        counter.phase = "forward"
        x = torch.ones(512)
        counter.phase = "backward"
        y = x + 1
        del y
    p = counter.peaks["backward"]
    assert p.nbytes == 1024 + 2048 + 2048
    assert p.by_phase == {"weights": 1024, "forward": 2048, "backward": 2048, "optimizer": 0}
    assert counter.peaks["forward"].nbytes == 1024 + 2048
    del x


def test_granularity_rounds_each_storage_like_the_cuda_allocator():
    counter = LiveBytes(granularity=512)
    with counter:
        t = torch.empty(3, dtype=torch.uint8)
        assert counter.current == 512
        u = torch.empty(129, dtype=torch.float32)             # 516 bytes -> 1024
        assert counter.current == 512 + 1024
    del t, u


def test_fake_tensors_are_counted_without_memory():
    mode = new_fake_mode()
    counter = LiveBytes()
    with mode, counter:
        big = torch.empty(1 << 20, 1 << 14)                   # 64 GiB of float32: no memory behind it
        assert counter.current == (1 << 34) * 4
        del big
    assert counter.peak == (1 << 34) * 4


def test_tied_weights_are_stored_once():
    emb = torch.nn.Embedding(100, 8)
    head = torch.nn.Linear(8, 100, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    assert storage_bytes(resident_tensors(model)) == 100 * 8 * 4
