"""The console's words in English and Chinese, chosen by Accept-Language."""
from __future__ import annotations

from flask import request

WORDS = {
    "title": ("Tollgate console", "Tollgate 控制台"),
    "sign_in": ("Sign in", "登录"),
    "credential": ("API key or JWT", "API 密钥或 JWT"),
    "sign_out": ("Sign out", "退出"),
    "overview": ("Overview", "概览"),
    "ledger": ("Ledger", "账单明细"),
    "keys": ("API keys", "API 密钥"),
    "models": ("Models", "模型"),
    "playground": ("Playground", "试用"),
    "accounts": ("Accounts", "账户"),
    "catalogue": ("Catalogue", "模型目录"),
    "live": ("Calls and health", "调用与健康"),
    "balance": ("Balance", "余额"),
    "held": ("Held", "冻结"),
    "credits": ("credits", "积分"),
    "spend_by_day": ("Spend by day (30 days)", "每日消费（30 天）"),
    "spend_by_model": ("Spend by model (30 days)", "按模型消费（30 天）"),
    "calls": ("Calls", "调用"),
    "cost": ("Cost", "费用"),
    "model": ("Model", "模型"),
    "when": ("When", "时间"),
    "kind": ("Kind", "类型"),
    "tokens": ("Tokens", "令牌"),
    "name": ("Name", "名称"),
    "create": ("Create", "创建"),
    "revoke": ("Revoke", "吊销"),
    "revoked": ("revoked", "已吊销"),
    "new_key": ("Your new key (shown once):", "新密钥（仅显示一次）："),
    "prefix": ("Prefix", "前缀"),
    "created": ("Created", "创建时间"),
    "prices": ("Prices (credits per 1k tokens)", "价格（每千令牌积分）"),
    "send": ("Send", "发送"),
    "prompt": ("Prompt", "提示词"),
    "answer": ("Answer", "回答"),
    "search": ("Search", "搜索"),
    "top_up": ("Top up or correct", "充值或更正"),
    "amount": ("Amount", "金额"),
    "note": ("Note", "备注"),
    "save": ("Save", "保存"),
    "enabled": ("Enabled", "启用"),
    "holds": ("Holds (calls in flight)", "冻结（进行中的调用）"),
    "breakers": ("Circuit breakers", "熔断器"),
    "readiness": ("Readiness", "就绪状态"),
    "nothing": ("Nothing yet.", "暂无数据。"),
    "forbidden": ("Operators only.", "仅限管理员。"),
    "bad_csrf": ("This form is stale or forged; reload the page and try again.", "表单已过期或无效，请刷新后重试。"),
    "expires": ("Expires", "过期时间"),
    "bound_by_key": ("This session was opened with an API key: a key made here is no broader than",
                     "此会话使用 API 密钥登录：在此创建的密钥不会超出该密钥的权限："),
    "key_models": ("Models (comma-separated; blank: all allowed)", "模型（逗号分隔；留空：全部允许的模型）"),
    "rpm": ("Requests per minute", "每分钟请求数"),
    "max_concurrent": ("Calls at once", "并发调用数"),
    "any": ("any", "全部"),
    "session_ended": ("Your session has ended: its credential was revoked or has expired. Sign in again.",
                      "会话已结束：登录凭据已吊销或过期，请重新登录。"),
    "not_your_key": ("A session opened with an API key may revoke only that key and the keys made from it.",
                     "使用 API 密钥登录的会话只能吊销该密钥及由它创建的密钥。"),
}


def lang() -> str:
    header = request.headers.get("Accept-Language", "")
    return "zh" if header.strip().lower().startswith("zh") else "en"


def t(key: str) -> str:
    en, zh = WORDS[key]
    return zh if lang() == "zh" else en
