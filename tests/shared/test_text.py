import pytest

from shared.text.language import detect_language
from shared.text.split import split_text


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("今天天气很好。", "zh"),
        ("こんにちは、元気ですか。", "ja"),
        ("東京は日本の首都です。", "ja"),
        ("北京是中国的首都。", "zh"),
        ("今日は東京へ行きます。", "ja"),
        ("Hello, world.", "en"),
        ("Version 2 of the API 接口", "en"),
        ("12345", "en"),
    ],
)
def test_detect_language(text: str, language: str) -> None:
    assert detect_language(text) == language


def test_short_text_is_one_segment() -> None:
    assert split_text("  Hello   there.\n\n", 200) == ["Hello there."]


def test_sentences_pack_up_to_the_cap() -> None:
    text = "今天天气很好。我们去公园散步吧！你觉得怎么样？好的，没问题。"
    segments = split_text(text, 16)
    assert segments == ["今天天气很好。我们去公园散步吧！", "你觉得怎么样？好的，没问题。"]
    assert "".join(segments) == text


def test_english_sentences_keep_a_space_when_packed() -> None:
    assert split_text("One. Two? Three!", 200) == ["One. Two? Three!"]


@pytest.mark.parametrize("cap", [10, 25, 60, 200])
def test_no_segment_exceeds_the_cap_and_no_text_is_lost(cap: int) -> None:
    text = (
        "The quick brown fox jumps over the lazy dog, again and again, while the farmer watches; "
        "then it rains. 吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
        "这是一个非常非常长的句子，它没有句号但是有很多逗号，而且还在继续，继续，继续下去" * 3
    )
    segments = split_text(text, cap)
    assert all(0 < len(s) <= cap for s in segments)
    assert "".join(segments).replace(" ", "") == text.replace(" ", "")


def test_long_sentence_splits_at_clauses_before_words() -> None:
    segments = split_text("这是第一部分，这是第二部分，这是第三部分。", 8)
    assert segments == ["这是第一部分，", "这是第二部分，", "这是第三部分。"]


def test_bad_cap() -> None:
    with pytest.raises(ValueError):
        split_text("x", 0)
