"""The agents checkers accept correct answers (hand-written, not the book's) and reject plausible wrong ones."""

from __future__ import annotations

import ast
import operator
import re

import pytest

from llmcore.exercises import check_calculator, check_search_score


def calc(expression):
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def ev(n):
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.UnaryOp):
            return -ev(n.operand)
        return ops[type(n.op)](ev(n.left), ev(n.right))
    return ev(ast.parse(expression.strip(), mode="eval").body)


def score(query, fact):
    return len(set(re.findall(r"[a-z0-9]+", query.lower())) & set(re.findall(r"[a-z0-9]+", fact.lower())))


def test_accept(capsys):
    assert check_calculator(calc) == 9 and check_search_score(score) == 6
    assert calc("2 + 3 * 4") == 14 and score("capital of koriba", "the capital of koriba is zamute.") == 3  # by hand
    assert capsys.readouterr().out.count("PASS") == 2


@pytest.mark.parametrize("wrong", [
    lambda expression: int(sum(int(t) for t in re.findall(r"\d+", expression))),  # adds everything
    lambda expression: calc(expression.replace("-", "+")),  # minus as plus
    lambda expression: calc(re.sub(r"[()]", "", expression)),  # ignores parentheses
])
def test_reject_calculator(wrong):
    with pytest.raises(AssertionError):
        check_calculator(wrong)


@pytest.mark.parametrize("wrong", [
    lambda query, fact: len(set(query.split()) & set(fact.split())),  # case and punctuation kept
    lambda query, fact: sum(w in fact for w in query.lower().split()),  # substrings, repeats counted
])
def test_reject_search_score(wrong):
    with pytest.raises(AssertionError):
        check_search_score(wrong)
