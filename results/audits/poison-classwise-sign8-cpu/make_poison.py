"""A user's own poison, made outside the benchmark: class-wise random +-8/255 patterns (a simple
class-wise additive poison) on the CIFAR-10 training set, saved as an npz of x_train/y_train."""
import sys

import numpy as np

clean = np.load(sys.argv[1])
x, y = clean["x_train"], clean["y_train"]  # uint8 N x 32 x 32 x 3, labels
rng = np.random.default_rng(1234)
patterns = rng.choice(np.array([-8, 8], dtype=np.int16), size=(10, 32, 32, 3))
poisoned = np.clip(x.astype(np.int16) + patterns[y], 0, 255).astype(np.uint8)
out = {"x_train": poisoned, "y_train": y}
if len(sys.argv) > 3 and sys.argv[3] == "--with-indices":
    out["poisoned_indices"] = np.arange(len(y))
np.savez(sys.argv[2], **out)
print(f"wrote {sys.argv[2]}: {poisoned.shape}, changed {int((poisoned != x).any(axis=(1, 2, 3)).sum())} images")
