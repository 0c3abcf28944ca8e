"""Every shipped config, once: the tests take their lists from here (``test_configs.py`` checks that
``configs/*.yaml`` holds exactly these), and the small test configs that shrink a model."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TEST_CONFIGS = Path(__file__).resolve().parent / "configs"

#: model -> its configs (paper scale, CPU scale, variants; a variant names its ``base``).
BY_MODEL = {
    "equivariant": [
        "mnist_equivariant.yaml", "mnist_equivariant_cpu.yaml", "mnist_equivariant_tx_ablation.yaml",
        "mnist_equivariant_tx_ablation_cpu.yaml", "sprites_equivariant.yaml", "sprites_equivariant_cpu.yaml",
        "reed_sprites_equivariant.yaml", "reed_sprites_equivariant_cpu.yaml",
    ],
    "hamiltonian": ["sprites_hamiltonian_cpu.yaml", "sprites_hamiltonian_skew_cpu.yaml", "sprites_hamiltonian.yaml", "sprites_hamiltonian_skew.yaml"],
    "judge": ["sprites_judge_cpu.yaml", "sprites_judge.yaml"],
    "video_folder": ["video_folder_equivariant_cpu.yaml", "video_folder_hamiltonian_cpu.yaml"],
}  # fmt: skip
ALL = [name for names in BY_MODEL.values() for name in names]
CPU = [name for name in ALL if name.endswith("_cpu.yaml")]
#: the scene-model CPU configs on the benchmark datasets
SCENE_CPU = [name for name in BY_MODEL["equivariant"] if name.endswith("_cpu.yaml")]
HAMILTONIAN_CPU = [name for name in BY_MODEL["hamiltonian"] if name.endswith("_cpu.yaml")]

#: second ``--config`` files that shrink a model to a few channels (fast CPU tests)
TINY_EQUIVARIANT = TEST_CONFIGS / "tiny_equivariant.yaml"
TINY_HAMILTONIAN = TEST_CONFIGS / "tiny_hamiltonian.yaml"
