"""How a slide's fields are split into batches on clusters of different sizes."""

from shadeflow.tasks.meanimage_graph import FIELDS_PER_BATCH_AT_SCALE, UNCAPPED_BATCHES, batch_count


def test_a_small_cluster_gives_every_thread_a_batch():
    assert batch_count(16, 2) == 2
    assert batch_count(1000, UNCAPPED_BATCHES) == UNCAPPED_BATCHES
    assert batch_count(3, 8) == 3  # never an empty batch
    assert batch_count(0, 4) == 1


def test_a_large_cluster_keeps_batches_big_enough_to_be_worth_their_merge():
    assert batch_count(1000, 500) == 1000 // FIELDS_PER_BATCH_AT_SCALE
    assert batch_count(1001, 500) == 1000 // FIELDS_PER_BATCH_AT_SCALE + 1
    # a small slide on a large cluster still gets the uncapped share
    assert batch_count(40, 500) == UNCAPPED_BATCHES
