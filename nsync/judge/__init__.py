"""The social-performance judge: SOTOPIA-Eval's seven dimensions, from a chat endpoint or a
local model's probabilities."""

from nsync.judge.backends import JUDGE_BACKENDS, ChatJudge, JudgeBackend, Judgement, LocalJudge
from nsync.judge.rubric import DIMENSION_NAMES, DIMENSIONS
from nsync.judge.schema import EpisodeScores, overall, parse_answer

__all__ = ["JUDGE_BACKENDS", "ChatJudge", "JudgeBackend", "DIMENSIONS", "DIMENSION_NAMES", "EpisodeScores", "Judgement", "LocalJudge", "overall", "parse_answer"]
