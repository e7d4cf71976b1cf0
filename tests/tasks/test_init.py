"""tasks.task_class: a task is found by importing its own module only."""

import subprocess
import sys

import tasks
from tasks.libsvm_logreg import LibsvmLogReg


def test_task_class_finds_a_task_by_its_module():
    assert tasks.task_class("libsvm_logreg") is LibsvmLogReg


def test_an_unknown_name_is_none_after_every_task_registered():
    assert tasks.task_class("no_such_task") is None
    assert {"libsvm_logreg", "cifar", "bert_mlm", "tinystories"} <= set(tasks.TASKS)


def test_a_libsvm_task_does_not_import_the_language_stack():
    code = (
        "import sys, tasks; tasks.task_class('libsvm_logreg');"
        "print(sorted(m for m in ('transformers', 'torchvision', 'tasks.bert_mlm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
