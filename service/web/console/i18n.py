"""The console's words in English and Chinese: the language switch's cookie, else Accept-Language.
LLM tokens are 词元 (Token); 令牌 and 密钥 are for API keys, as one-api's users read them."""
from __future__ import annotations

import re

from flask import request

from service.web.console import zh

LANG_COOKIE = "tollgate_lang"
LANGS = ("en", "zh")

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
    "spend_by_day": ("Spend by day (30 days, UTC)", "每日消费（30 天，UTC）"),
    "spend_by_model": ("Spend by model (30 days)", "按模型消费（30 天）"),
    "calls": ("Calls", "调用"),
    "cost": ("Cost", "费用"),
    "amount_signed": ("Amount (credits)", "金额（积分）"),
    "model": ("Model", "模型"),
    "when": ("When (UTC)", "时间（UTC）"),
    "kind": ("Kind", "类型"),
    "tokens": ("Tokens", "词元（Token）"),
    "name": ("Name", "名称"),
    "create": ("Create", "创建"),
    "revoke": ("Revoke", "吊销"),
    "revoked": ("revoked", "已吊销"),
    "new_key": ("Your new key (shown once):", "新密钥（仅显示一次）："),
    "prefix": ("Prefix", "前缀"),
    "created": ("Created", "创建时间"),
    "prices": ("Prices (credits per 1k tokens)", "价格（每千词元积分）"),
    "send": ("Send", "发送"),
    "sending": ("Sending…", "发送中…"),
    "prompt": ("Prompt", "提示词"),
    "answer": ("Answer", "回答"),
    "answers": ("Answers side by side", "并排对比的回答"),
    "compare": ("Compare models side by side", "多个模型并排对比"),
    "compare_pick": ("Models to compare (2 to 4)", "要对比的模型（2 到 4 个）"),
    "compare_count": ("Pick {} to {} models to compare", "请选择 {} 到 {} 个模型进行对比"),
    "total_cost": ("Total cost", "总费用"),
    "search": ("Search", "搜索"),
    "top_up": ("Top up or correct", "充值或更正"),
    "amount": ("Amount", "金额"),
    "note": ("Note", "备注"),
    "operator": ("Operator", "操作员"),
    "save": ("Save", "保存"),
    "enabled": ("Enabled", "启用"),
    "holds": ("Holds (calls in flight)", "冻结（进行中的调用）"),
    "request_id": ("Request", "请求"),
    "age": ("Age", "已持续"),
    "taken_at": ("Taken (UTC)", "冻结时间（UTC）"),
    "hold_expires": ("Expires if its call stops (UTC)", "调用中断后的释放时间（UTC）"),
    "breakers": ("Circuit breakers", "熔断器"),
    "readiness": ("Readiness", "就绪状态"),
    "reasons": ("Why", "原因"),
    "none": ("none", "无"),
    "nothing": ("Nothing yet.", "暂无数据。"),
    "forbidden": ("Operators only.", "仅限管理员。"),
    "not_found": ("No such page or account.", "页面或账户不存在。"),
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
    "estimated": ("* estimated: the provider reported no usage, so the charge was counted from the text.",
                  "* 估算：模型服务未返回用量，按文本估算计费。"),
    "older": ("Older", "更早"),
    "newer": ("Newest", "最新"),
    "next_page": ("Next", "下一页"),
    "first_page": ("First", "第一页"),
    "scroll_hint": ("Swipe sideways to see every column.", "左右滑动查看所有列。"),
    "language": ("中文", "English"),
    "base_price_required": ("the base price (cost_per_1k_tokens) is required: a cleared price is not 0",
                            "基础价格（cost_per_1k_tokens）为必填项：清空不等于 0"),
    "unknown_fallback": ("fallbacks: no model named {}", "fallbacks：不存在名为 {} 的模型"),
    "row_error": ("Not saved: {}", "未保存：{}"),
    "ok": ("ok", "正常"), "degraded": ("degraded", "降级"), "down": ("down", "不可用"), "off": ("off", "未配置"),
    "check_database": ("Database", "数据库"), "check_redis": ("Redis", "Redis"),
    "check_catalogue": ("Catalogue", "模型目录"), "check_breakers": ("Open circuit breakers", "已熔断的上游"),
    "check_journal": ("Settles waiting for the database", "等待写入数据库的结算"),
    # the Logs pages and a key's page (issue 35)
    "logs": ("Logs", "调用日志"), "call": ("Call", "调用"), "from": ("From", "起始"), "to": ("To", "截止"),
    "status": ("Status", "状态码"), "key": ("API key", "API 密钥"), "filter": ("Filter", "筛选"),
    "clear": ("Clear", "清除"), "endpoint": ("Endpoint", "接口"), "error_code": ("Error", "错误码"),
    "latency": ("Latency", "总耗时"), "upstream_time": ("Upstream time", "上游耗时"),
    "ttft": ("Time to first token", "首词元耗时"), "deployment": ("Deployment", "部署"),
    "cache_hit": ("cache hit", "缓存命中"), "cache_hit_label": ("Cache hit", "缓存命中"),
    "streamed": ("streamed", "流式"), "yes": ("yes", "是"), "no": ("no", "否"),
    "client_request_id": ("Client request id", "客户端请求 ID"),
    "prompt_tokens": ("prompt", "提示"), "completion_tokens": ("completion", "补全"),
    "lc_cached": ("cached", "缓存"), "lc_cache_write_5m": ("cache write 5 min", "缓存写入 5 分钟"),
    "lc_cache_write_1h": ("cache write 1 h", "缓存写入 1 小时"), "lc_reasoning": ("reasoning", "推理"),
    "request_body": ("Request", "请求内容"), "response_body": ("Answer", "回答内容"),
    "bodies_redacted": ("Keys, tokens, e-mail addresses and card numbers are redacted.",
                        "密钥、令牌、电子邮件地址和银行卡号已隐去。"),
    "no_bodies": ("Bodies were not kept for this call (body logging is off for its account and key, or they "
                  "have expired).", "此调用未保存请求与回答内容（其账户与密钥未开启内容记录，或已过保存期）。"),
    "no_such_call": ("No such call in your logs.", "日志中没有这个调用。"),
    "budget": ("Budget", "预算"), "budget_period": ("Budget period", "预算周期"),
    "spent_this_period": ("Spent this period", "本周期已用"), "period_resets": ("Period resets", "周期重置"),
    "never": ("never", "不重置"), "blank_no_budget": ("blank: no budget", "留空：不设预算"),
    "period_day": ("day", "每日"), "period_week": ("week", "每周"), "period_month": ("month", "每月"),
    "period_total": ("in total", "总计"),
    "key_spend_by_day": ("This key's spend by day (30 days, UTC)", "此密钥每日消费（30 天，UTC）"),
    "limits_and_budget": ("Limits and budget", "限制与预算"),
    "not_your_key_edit": ("A session opened with an API key may change only that key and the keys made from it.",
                          "使用 API 密钥登录的会话只能修改该密钥及由它创建的密钥。"),
    "budget_over_parent": ("'budget' may be at most {} credits, this session's key's own",
                           "预算最多为 {} 积分（此会话密钥的预算）"),
    "period_under_parent": ("'budget_period' may be no shorter than this session's key's ({})",
                            "预算周期不能短于此会话密钥的周期（{}）"),
    "spend_by_model_range": ("Spend by model", "按模型消费"), "included": ("included", "含当日"),
    "show": ("Show", "显示"),
    # ledger kinds and token classes
    "kind_charge": ("charge", "扣费"), "kind_topup": ("top-up", "充值"), "kind_adjust": ("correction", "更正"),
    "kind_overrun": ("overrun", "超额"),
    "cls_input": ("input", "输入"), "cls_cached_input": ("cached input", "缓存输入"),
    "cls_cache_write_5m": ("cache write 5 min", "缓存写入 5 分钟"),
    "cls_cache_write_1h": ("cache write 1 h", "缓存写入 1 小时"),
    "cls_output": ("output", "输出"), "cls_reasoning": ("reasoning", "推理"),
    # catalogue fields
    "f_cost_per_1k_tokens": ("Base price", "基础价格"),
    "f_cost_per_1k_input_tokens": ("Input", "输入"),
    "f_cost_per_1k_cached_input_tokens": ("Cached input", "缓存输入"),
    "f_cost_per_1k_cache_write_5m_tokens": ("Cache write 5 min", "缓存写入 5 分钟"),
    "f_cost_per_1k_cache_write_1h_tokens": ("Cache write 1 h", "缓存写入 1 小时"),
    "f_cost_per_1k_output_tokens": ("Output", "输出"),
    "f_cost_per_1k_reasoning_tokens": ("Reasoning", "推理"),
    "f_cost_per_1k_cache_hit_tokens": ("Response cache hit", "响应缓存命中"),
    "f_aliases": ("Aliases (comma-separated)", "别名（逗号分隔）"),
    "f_fallbacks": ("Fallbacks (comma-separated model names)", "备用模型（逗号分隔的模型名）"),
    "models_not_allowed": ("This session's key may not use {}", "此会话的密钥不能使用 {}"),
    "budget_mints_nothing": ("A key with a budget cannot make keys: its budget binds only its own calls",
                             "有预算的密钥不能创建新密钥：预算只约束它自己的调用"),
    "at_most_parent": ("'{}' may be at most {}, this session's key's own", "{}最多为 {}（此会话密钥的上限）"),
    "outlives_parent": ("The new key may not outlive this session's key (it expires {} UTC)",
                        "新密钥的有效期不能超过此会话的密钥（其过期时间为 {} UTC）"),
    "bad_expiry": ("'expires_at' must be a date and time (UTC)", "过期时间必须是日期和时间（UTC）"),
    "price_unit": ("credits per 1k tokens", "每千词元积分"),
    # the operator's deployments page and the catalogue's deployments (SPEC §15)
    "deployments": ("Deployments", "部署"),
    "deployments_help": ("Each catalogue model with deployments: their state as the router sees it. A disabled "
                         "deployment takes no calls until it is enabled here; edit deployments on the catalogue page.",
                         "每个配置了部署的模型及其各部署在路由中的状态。已停用的部署在此重新启用前不接收调用；"
                         "部署的字段在模型目录页面编辑。"),
    "no_deployments": ("No catalogue model has deployments yet; add them on the catalogue page.",
                       "目录中还没有配置部署的模型，可在模型目录页面添加。"),
    "routing": ("Routing", "路由策略"), "state": ("State", "状态"), "in_flight": ("In flight", "进行中"),
    "requests": ("Requests", "请求数"), "errors": ("Errors", "错误数"),
    "p50_latency": ("p50 latency", "延迟中位数"), "p50_ttft": ("p50 first token", "首词元时间中位数"),
    "cooling_until": ("Cooling until (UTC)", "冷却结束（UTC）"), "weight": ("Weight", "权重"),
    "priority": ("Priority", "优先级"), "caps": ("Caps (rpm / tpm / at once)", "上限（每分钟请求 / 每分钟词元 / 并发）"),
    "enable": ("Enable", "启用"), "disable": ("Disable", "停用"),
    "dep_ok": ("ok", "正常"), "dep_cooling": ("cooling", "冷却中"), "dep_open": ("open (circuit breaker)", "已熔断"),
    "dep_disabled": ("disabled", "已停用"),
    "f_routing": ("Routing across deployments", "部署间路由策略"),
    "routing_default": ("default (weighted)", "默认（按权重）"),
    "f_deployments": ("Deployments (JSON: a list of tables, as [[models.deployments]] in models.toml; blank: none)",
                      "部署（JSON：表的列表，同 models.toml 中的 [[models.deployments]]；留空：无）"),
    "deployments_not_json": ("deployments: not valid JSON ({})", "部署：不是有效的 JSON（{}）"),
    # the operator's audit log (SPEC §17)
    "audit": ("Audit log", "审计日志"), "actor": ("Actor", "操作者"), "action": ("Action", "操作"),
    "target": ("Target", "对象"), "detail": ("Detail", "详情"), "address": ("Address", "地址"),
    "filter": ("Filter", "筛选"),
}

# a message with no Chinese wording: its English detail in a Chinese frame
ERROR_FRAME_ZH = "参数无效：{}"
HAN = re.compile("[\u4e00-\u9fff]")  # a message worded in Chinese already


def lang() -> str:
    """The switch's choice (a cookie), else the browser's first language."""
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGS:
        return chosen
    header = request.headers.get("Accept-Language", "")
    return "zh" if header.strip().lower().startswith("zh") else "en"


def t(key: str, *args) -> str:
    en, zh = WORDS[key]
    return (zh if lang() == "zh" else en).format(*args)


def said(english: str) -> str:
    """A status line of the service's own (readiness) in the page's language."""
    return (zh.message(english) or english) if lang() == "zh" else english


def error(err) -> str:
    """A GatewayError's message in the page's language: the contract's Chinese where it has one,
    else service/web/console/zh.py's, else the English detail in a Chinese frame."""
    message = err.body(lang())["message"]
    if lang() != "zh" or message != err.message or HAN.search(message):
        return message
    return zh.message(message) or ERROR_FRAME_ZH.format(message)
