"""Gaussian diffusion against closed forms and an exactly solvable data distribution."""
import numpy as np
import pytest
import torch

from d2it.diffusion import GaussianDiffusion, guided, linear_betas, spaced_timesteps

T = 1000


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.dit(T)


def test_q_sample_mean_and_variance(diffusion):
    torch.manual_seed(0)
    abar = np.cumprod(1 - np.linspace(1e-4, 2e-2, T))
    x0 = torch.full((20000, 1, 1, 1), 0.7, dtype=torch.float64)
    for step in (0, 100, 500, 999):
        t = torch.full((len(x0),), step)
        xt = diffusion.q_sample(x0, t, torch.randn_like(x0))
        assert xt.mean().item() == pytest.approx(np.sqrt(abar[step]) * 0.7,
                                                 abs=4 * np.sqrt((1 - abar[step]) / len(x0)) + 1e-9)
        assert xt.var().item() == pytest.approx(1 - abar[step], rel=0.05, abs=1e-6)
        mean, var = diffusion.q_mean_variance(x0[:1], t[:1])
        assert (mean.item() == pytest.approx(np.sqrt(abar[step]) * 0.7)
                and var.item() == pytest.approx(1 - abar[step]))


def test_posterior_matches_bayes_rule(diffusion):
    """q(x_{t-1} | x_t, x_0) from the product of N(x_{t-1}; sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) and
    N(x_t; sqrt(alpha_t) x_{t-1}, beta_t)."""
    betas = linear_betas(T)
    abar = np.cumprod(1 - betas)
    x0 = torch.tensor([[[[0.3]]]], dtype=torch.float64)
    xt = torch.tensor([[[[-0.8]]]], dtype=torch.float64)
    for step in (1, 10, 400, 999):
        precision = 1 / (1 - abar[step - 1]) + (1 - betas[step]) / betas[step]
        var = 1 / precision
        mean = var * (np.sqrt(abar[step - 1]) * 0.3 / (1 - abar[step - 1])
                      + np.sqrt(1 - betas[step]) * -0.8 / betas[step])
        m, v, logv = diffusion.q_posterior(x0, xt, torch.tensor([step]))
        assert (m.item() == pytest.approx(mean, rel=1e-9)
                and v.item() == pytest.approx(var, rel=1e-9))
        assert logv.item() == pytest.approx(np.log(var), rel=1e-9)


def test_respacing_keeps_alpha_bar_at_kept_steps(diffusion):
    for count in (250, 50, 7):
        spaced = GaussianDiffusion.dit(T, count)
        kept = spaced_timesteps(T, count)
        assert len(kept) == count and kept[0] == 0 and kept[-1] == T - 1
        np.testing.assert_allclose(spaced.alphas_cumprod, diffusion.alphas_cumprod[kept],
                                   rtol=1e-12)
        assert spaced.timesteps.tolist() == kept


@pytest.mark.e2e
@pytest.mark.parametrize("steps", [1000, 250])
def test_ddpm_with_exact_eps_samples_the_gaussian_data(steps):
    """For x0 ~ N(mu, diag s^2), E[eps | x_t] = sd_t (x_t - a_t mu) / (a_t^2 s^2 + sd_t^2) is the
    ideal ε-model."""
    torch.manual_seed(0)
    diffusion = GaussianDiffusion.dit(T, steps)
    mu = torch.tensor([0.5, -1.0]).reshape(1, 2, 1, 1).double()
    s = torch.tensor([0.3, 1.5]).reshape(1, 2, 1, 1).double()
    abar_full = torch.from_numpy(np.cumprod(1 - linear_betas(T)))

    def model(x, t):
        a = abar_full[t].sqrt().reshape(-1, 1, 1, 1)
        sd = (1 - abar_full[t]).sqrt().reshape(-1, 1, 1, 1)
        eps = sd * (x - a * mu) / (a**2 * s**2 + sd**2)
        return torch.cat([eps, -torch.ones_like(eps)], 1)  # v = -1: the posterior variance

    n = 8000
    x = diffusion.ddpm_sample(model, lambda shape: torch.randn(shape, dtype=torch.float64),
                              (n, 2, 1, 1)).flatten(1)
    assert torch.allclose(x.mean(0), mu.flatten(), atol=4 * s.flatten().max().item() / np.sqrt(n))
    np.testing.assert_allclose(x.std(0).numpy(), s.flatten().numpy(), rtol=0.05)
    assert abs(np.corrcoef(x.T.numpy())[0, 1]) < 4 / np.sqrt(n)


def test_guidance_combines_branches():
    def model(x, t, y):
        return torch.cat([x * 0 + y.reshape(-1, 1, 1, 1).float(), torch.zeros_like(x)], 1)

    x, t, y = torch.zeros(2, 4, 2, 2), torch.zeros(2, dtype=torch.long), torch.tensor([3, 5])
    out = guided(model, null_label=1, scale=2.0)(x, t, y)
    assert torch.equal(out[:, :4],
                       (1 + 2.0 * (y - 1)).reshape(-1, 1, 1, 1).float().expand(2, 4, 2, 2))
    three = guided(model, null_label=1, scale=2.0, channels=3)(x, t, y)
    # 4th channel: conditional ε
    assert torch.equal(three[:, 3], y.reshape(-1, 1, 1).float().expand(2, 2, 2))


def test_vlb_t0_term_is_dits_formula():
    """The t = 0 term uses DiT's tanh CDF (improved-diffusion's `approx_standard_normal_cdf`),
    computed here in float64 NumPy from the formula, not the exact normal CDF."""
    from scipy.stats import norm

    from d2it.diffusion import discretized_gaussian_log_likelihood

    def tanh_cdf(v):
        return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))

    x = np.array([-1.0, -0.5, 0.0, 0.3, 1.0])
    mean = np.array([-0.98, -0.49, 0.02, 0.29, 0.97])
    log_scale = np.log(np.array([0.02, 0.01, 0.03, 0.005, 0.04]))
    inv_std = np.exp(-log_scale)
    plus = tanh_cdf(inv_std * (x - mean + 1 / 255))
    minus = tanh_cdf(inv_std * (x - mean - 1 / 255))
    expected = np.where(x < -0.999, np.log(plus),
                        np.where(x > 0.999, np.log(1 - minus), np.log(plus - minus)))
    got = discretized_gaussian_log_likelihood(torch.tensor(x), torch.tensor(mean),
                                              torch.tensor(log_scale)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # The formula matters: the exact CDF gives a measurably different interior term.
    exact = np.log(norm.cdf(inv_std * (x - mean + 1 / 255))
                   - norm.cdf(inv_std * (x - mean - 1 / 255)))
    assert np.abs(exact[1:4] - expected[1:4]).max() > 1e-4
