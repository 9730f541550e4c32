"""The social-performance judge: SOTOPIA-Eval's seven dimensions, from a chat endpoint or a
local model's probabilities."""

# Names load on first use (SPEC 1 lazy loading): ``nsync judge --help`` imports no torch.
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    # submodules too: nsync.judge.<module> works after `import nsync.judge`, as it did with eager imports
    submodules=["backends", "rubric", "run", "schema"],
    submod_attrs={
        "backends": ["JUDGE_BACKENDS", "ChatJudge", "JudgeBackend", "Judgement", "LocalJudge"],
        "rubric": ["DIMENSION_NAMES", "DIMENSIONS"],
        "schema": ["EpisodeScores", "overall", "parse_answer"],
    },
)
