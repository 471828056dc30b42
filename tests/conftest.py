import os
import sys

import torch

# Tests import the top-level modules (model.py, generate.py, ...) from the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
