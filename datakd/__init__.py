"""datakd: knowledge distillation where the data the teacher shows the student is a first-class lever."""

__version__ = "0.1.0"
