"""The paper's evaluation: CB3D as the Inception network, IS/FID/PRDC, downstream accuracy, report."""
