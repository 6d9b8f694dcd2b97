"""Evaluation: win rates against a baseline, their length-adjusted variant, bootstrap intervals, and the
paper-shaped tables and reward-dynamics plots. The modules here are pure logic: no Ray, no vLLM.
"""
