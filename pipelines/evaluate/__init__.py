"""The papers' evaluations and reward labels as Ray jobs (eval invert, eval rewrite, label) and the report."""
