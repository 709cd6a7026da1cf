"""Stream builders: the offline stream's shape, and clear errors where real data is missing."""
import pytest

from avalanche_convprompt.streams import make_stream, vit_eval_transform, vit_train_transform


def test_synthetic_stream_has_names_and_descriptor_keys_for_every_class():
    stream = make_stream("synthetic", n_experiences=2, img_size=32, train_per_class=4, test_per_class=2)
    classes = [c for e in stream.benchmark.train_stream for c in e.classes_in_this_experience]
    assert len(classes) == 8 and set(classes) == set(stream.class_names) == set(stream.class_keys)
    assert stream.descriptor_set == "synthetic"
    x, y, *_ = stream.benchmark.train_stream[0].dataset[0]
    assert x.shape == (3, 32, 32) and y in stream.class_names


def test_synthetic_stream_resizes_for_larger_backbones():
    stream = make_stream("synthetic", n_experiences=1, img_size=64, train_per_class=2, test_per_class=2)
    x, *_ = stream.benchmark.test_stream[0].dataset[0]
    assert x.shape == (3, 64, 64)


def test_missing_cifar100_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python lacks train, test, meta\. Download https://"):
        make_stream("split_cifar100", data_root=str(tmp_path))
    with pytest.raises(ValueError, match="needs --data-root"):
        make_stream("split_cifar100")
    with pytest.raises(ValueError, match="unknown stream 'mnist'"):
        make_stream("mnist")


def test_paper_transforms_give_224_pixel_tensors_in_unit_range():
    from PIL import Image
    img = Image.new("RGB", (300, 200), color=(255, 0, 0))
    for tf in (vit_train_transform(224), vit_eval_transform(224)):
        x = tf(img)
        assert x.shape == (3, 224, 224) and float(x.max()) <= 1.0 and float(x.min()) >= 0.0
